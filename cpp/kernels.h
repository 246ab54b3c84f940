// Tuned kernels: same signatures and semantics as the reference layers in layers.h, but with
// OpenMP threads (parallel regions use the calling thread's omp_get_max_threads()) and SIMD
// selected at run time (scalar / AVX2+FMA / AVX-512). For a given thread count, results do not
// depend on timing: every reduction is split statically and summed in a fixed order.
// tests/test_kernels.py checks each one against its reference twin on odd shapes.
#pragma once
#include "fused.h"
#include "layers.h"

namespace ndlm {
namespace fast {

// Every op of ops.def (layer kernels and fused pointwise segments), dispatched to the current level.
#define NDLM_OP(name, params, args) void name params;
#define NDLM_SEG_OP(name, params, args) void name params;
#include "ops.def"

// Which instruction set the dispatcher picked: "avx512", "avx2" or "generic". The best level the
// CPU supports is used unless the environment variable NDLM_SK_SIMD=generic|avx2|avx512 (read once,
// at the first kernel call) asks for a lower one.
const char* simd_level();
// Switch the level at run time (for tests comparing levels in one process). Returns false, and
// changes nothing, for an unknown name or a level this CPU does not support. Do not call while
// kernels are running in other threads.
bool set_simd_level(const char* name);

}  // namespace fast
}  // namespace ndlm
