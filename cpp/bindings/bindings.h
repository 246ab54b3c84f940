// Internal to the Python bindings (module ndlm_sk._core), split by concern:
//   module.cpp      the module and its free functions
//   layer_spec.cpp  layer-spec dicts <-> LayerSpec, the limits on settings
//   network_py.cpp  the Network class (every accessor holds the network's lock)
//   kernels_py.cpp  single kernels for the tests (_core.kernels)
// Every entry point checks what it is given (shapes, dtypes, index ranges) and raises ValueError
// before touching memory.
#pragma once
#include <pybind11/pybind11.h>

#include <cstddef>

#include "network.h"

namespace ndlm {
namespace py_bindings {

namespace py = pybind11;

// Layer settings and image sizes above this are refused: no real network needs them, and bounding
// them keeps every shape computation far from int overflow.
constexpr int kMaxDim = 1 << 20;
constexpr int kMaxThreads = 1024;

int check_threads(int n);                             // n, or ValueError
LayerSpec parse_spec(const py::handle& h, size_t i);  // layer i's dict -> spec, or ValueError
py::dict spec_to_dict(const LayerSpec& s);            // every setting filled in

void bind_network(py::module_& m);
void bind_kernels(py::module_& k);

}  // namespace py_bindings
}  // namespace ndlm
