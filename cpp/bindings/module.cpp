// The private extension module ndlm_sk._core (typed in python/ndlm_sk/_core.pyi).
#include <omp.h>
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "kernels.h"
#include "network.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    using namespace ndlm;
    m.doc() = "NDLM core: layers, network and Adam in C++ (private; use ndlm_sk.NDLMClassifier)";
    m.def("simd_level", &fast::simd_level, "Instruction set picked at run time for the tuned kernels");
    m.def(
        "max_threads", []() { return omp_get_max_threads(); },
        "OpenMP's default thread count (OMP_NUM_THREADS)");
    // the limits the core enforces, so the Python checks use the same numbers
    m.attr("MAX_THREADS") = py_bindings::kMaxThreads;
    m.attr("MAX_DIM") = py_bindings::kMaxDim;
    m.def("memory_limit", &memory_limit_bytes,
          "Bytes a network may use: physical memory, a lower cgroup limit, or NDLM_SK_MEMORY_LIMIT");
    py::module_ k =
        m.def_submodule("kernels", "Single layers, tuned ('fast') or reference ('ref'), for tests");
    py_bindings::bind_kernels(k);
    py_bindings::bind_network(m);
}
