// Tuned kernels compiled for the "avx512" level (-mavx512f -mavx512bw -mavx512vl -mavx2 -mfma; see
// CMakeLists.txt). The bodies are cpp/ops/<op>_simd.h, gathered by kernels_impl.h; kernels_dispatch.cpp picks
// a level at run time.
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__)
#error "kernels_avx512.cpp must be compiled with -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma"
#endif
// GCC 12 reports false -Wmaybe-uninitialized inside its own AVX-512 intrinsics (_mm512_undefined)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#define NDLM_ISA_NS isa_avx512
#include "kernels_impl.h"

namespace ndlm {
namespace fast {
namespace detail {
const KernelTable* table_avx512() { return &::ndlm::isa_avx512::kTable; }
}  // namespace detail
}  // namespace fast
}  // namespace ndlm
