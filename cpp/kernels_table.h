// Internal: the function-pointer table each ISA translation unit exports, and the dispatcher's
// view of them. Not part of the public kernel API (kernels.h).
#pragma once
#include "fused.h"
#include "layers.h"

namespace ndlm {
namespace fast {
namespace detail {

struct KernelTable {
    const char* name;
#define NDLM_OP(name, params, args) void(*name) params;
#define NDLM_SEG_OP(name, params, args) void(*name) params;
#include "ops.def"
};

// Defined in kernels_generic.cpp (always), kernels_avx2.cpp and kernels_avx512.cpp (x86-64 only,
// NDLM_X86). Calling the AVX2 / AVX-512 tables on a CPU without those instructions is undefined:
// the dispatcher checks __builtin_cpu_supports first.
const KernelTable* table_generic();
#if defined(NDLM_X86)
const KernelTable* table_avx2();
const KernelTable* table_avx512();
#endif

}  // namespace detail
}  // namespace fast
}  // namespace ndlm
