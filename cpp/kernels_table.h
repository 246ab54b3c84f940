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
    decltype(&ref::batchnorm_forward_train) batchnorm_forward_train;
    decltype(&ref::batchnorm_forward_infer) batchnorm_forward_infer;
    decltype(&ref::batchnorm_backward) batchnorm_backward;
    decltype(&ref::lrn_forward) lrn_forward;
    decltype(&ref::lrn_backward) lrn_backward;
    decltype(&ref::conv_forward) conv_forward;
    decltype(&ref::conv_backward) conv_backward;
    decltype(&ref::relu_forward) relu_forward;
    decltype(&ref::relu_backward) relu_backward;
    decltype(&ref::maxpool_forward) maxpool_forward;
    decltype(&ref::maxpool_backward) maxpool_backward;
    decltype(&ref::fc_forward) fc_forward;
    decltype(&ref::fc_backward) fc_backward;
    // fused pointwise segments (fused.h); their reference is the per-layer path
    void (*seg_bn_stats)(float* mean, float* rstd, const float* x, const SegShape& s, const SegOp* ops,
                         int nops, float eps);
    void (*seg_forward)(float* y, int32_t* argmax, float* vlast, const float* x, const SegShape& s,
                        const SegOp* ops, int nops);
    void (*seg_bwd_sums)(double* sdy, double* sdx, const float* x, const float* dy, const int32_t* argmax,
                         const float* vlast, const SegShape& s, const SegOp* ops, int nops, int j);
    void (*seg_backward)(float* dx, const float* x, const float* dy, const int32_t* argmax, const SegShape& s,
                         const SegOp* ops, int nops);
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
