// Tuned kernels compiled for the "generic" level (no -m flags: SSE2 on x86-64, scalar elsewhere; see
// CMakeLists.txt). The bodies are cpp/ops/<op>_simd.h, gathered by kernels_impl.h; kernels_dispatch.cpp picks
// a level at run time.
#define NDLM_ISA_NS isa_generic
#include "kernels_impl.h"

namespace ndlm {
namespace fast {
namespace detail {
const KernelTable* table_generic() { return &::ndlm::isa_generic::kTable; }
}  // namespace detail
}  // namespace fast
}  // namespace ndlm
