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

void batchnorm_forward_train(float* y, float* mean, float* rstd, const float* x, const float* gamma,
                             const float* beta, int N, int C, int HW, float eps);
void batchnorm_forward_infer(float* y, const float* x, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, int N, int C, int HW,
                             float eps);
void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* mean, const float* rstd, const float* gamma, int N, int C, int HW);
void lrn_forward(float* y, const float* x, int N, int C, int HW, int size, float alpha, float beta, float k);
void lrn_backward(float* dx, const float* dy, const float* x, int N, int C, int HW, int size, float alpha,
                  float beta, float k);
void conv_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s);
void conv_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                   const ConvShape& s);
void relu_forward(float* y, const float* x, int64_t n);
void relu_backward(float* dx, const float* dy, const float* y, int64_t n);
void maxpool_forward(float* y, int32_t* argmax, const float* x, int N, int C, int H, int W, int K, int S,
                     int OH, int OW);
void maxpool_backward(float* dx, const float* dy, const int32_t* argmax, int N, int C, int H, int W, int OH,
                      int OW);
void fc_forward(float* y, const float* x, const float* w, const float* b, int N, int F, int O);
void fc_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int N,
                 int F, int O);

// Fused pointwise segments (fused.h). Statistics of the values after ops [0, nops) of x (nops may
// be 0); the segment's output (pooled with argmax when s.K == s.S > 0; vlast, if not null, gets the
// last batch norm's input at the argmax positions); per-channel backward sums of the batch norm
// ops[j] (over the pooled outputs only when j is the last batch norm and vlast is given); the
// gradient of the segment input. Reference: the per-layer kernels above (tests/test_fused.py).
void seg_bn_stats(float* mean, float* rstd, const float* x, const SegShape& s, const SegOp* ops, int nops,
                  float eps);
void seg_forward(float* y, int32_t* argmax, float* vlast, const float* x, const SegShape& s, const SegOp* ops,
                 int nops);
void seg_bwd_sums(double* sdy, double* sdx, const float* x, const float* dy, const int32_t* argmax,
                  const float* vlast, const SegShape& s, const SegOp* ops, int nops, int j);
void seg_backward(float* dx, const float* x, const float* dy, const int32_t* argmax, const SegShape& s,
                  const SegOp* ops, int nops);

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
