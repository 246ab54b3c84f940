// The tuned kernels of one instruction set: the op files ops/<op>_simd.h, written once against the
// SIMD abstraction of simd.h, are included here and compiled once per instruction set: kernels_generic.cpp
// (baseline x86-64 / scalar), kernels_avx2.cpp
// (-mavx2 -mfma) and kernels_avx512.cpp (-mavx512f -mavx512bw -mavx512vl). Each unit defines
// NDLM_ISA_NS before including this file; every op file lives in an anonymous namespace inside
// it, so no symbol compiled with one instruction set can be picked by the linker for another.
// For the same reason the op files use no out-of-line std:: templates (no std::vector, std::min):
// a weak instantiation emitted by the AVX-512 unit could otherwise be shared with the others.
//
// Conventions (as the reference ops/<op>_ref.cpp): parameter gradients accumulate (+=), input
// gradients are overwritten. Threads: every parallel region uses the default team size, work is
// split into contiguous static ranges and per-thread partial sums are combined in thread order,
// so a result depends only on the thread count. Batch-wide reductions are summed in float over
// short blocks (<= 1024 values per plane chunk, <= one band of rows for conv dw) and in double
// across blocks.
#ifndef NDLM_ISA_NS
#error "define NDLM_ISA_NS before including kernels_impl.h"
#endif

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "kernels_table.h"
#include "ops/shared.h"
#include "simd.h"

namespace ndlm {
namespace NDLM_ISA_NS {
namespace {

using R = Simd::R;

// in dependency order: later files use the helpers of earlier ones
// clang-format off
#include "ops/common_simd.h"
#include "ops/batchnorm_simd.h"
#include "ops/lrn_simd.h"
#include "ops/relu_simd.h"
#include "ops/maxpool_simd.h"
#include "ops/fc_simd.h"
#include "ops/conv_common_simd.h"
#include "ops/conv_forward_simd.h"
#include "ops/conv_backward_weights_simd.h"
#include "ops/conv_backward_data_simd.h"
#include "ops/fused_simd.h"
#include "ops/conv_pool_simd.h"
// clang-format on

}  // namespace

const fast::detail::KernelTable kTable = {
    Simd::name,
#define NDLM_OP(name, params, args) &name,
#define NDLM_SEG_OP(name, params, args) &name,
#include "ops.def"
};

}  // namespace NDLM_ISA_NS
}  // namespace ndlm
