// Tuned kernels compiled for the "avx2" level (-mavx2 -mfma; see CMakeLists.txt).
// The bodies are cpp/ops/<op>_simd.h, gathered by kernels_impl.h; kernels_dispatch.cpp picks a level at run
// time.
#if !defined(__AVX2__) || !defined(__FMA__)
#error "kernels_avx2.cpp must be compiled with -mavx2 -mfma"
#endif
#define NDLM_ISA_NS isa_avx2
#include "kernels_impl.h"

namespace ndlm {
namespace fast {
namespace detail {
const KernelTable* table_avx2() { return &::ndlm::isa_avx2::kTable; }
}  // namespace detail
}  // namespace fast
}  // namespace ndlm
