// Plain reference layers of NDLM on flat float buffers, NCHW layout.
//
// Why NCHW: per-channel work (batch norm, pooling) runs over contiguous planes, the convolution
// vectorizes over output columns with full SIMD lanes even for 3 or 10 channels, cross-channel
// LRN reads neighbouring planes with unit stride, and the flattening order of the fully connected
// layer is the one PyTorch and ONNX use, so weights move between them without permutation.
// Images arrive as (N, H, W, C) (stacked Pillow images) and are transposed once per mini-batch.
//
// Conventions (after karpathy/llm.c): each forward is followed by its backward; parameter
// gradients d<name> are ACCUMULATED (+=); the gradient w.r.t. the layer input is OVERWRITTEN
// (=), which saves a zeroing pass over the large activations. These are the reference versions:
// obvious loops, no SIMD, no threads. The tuned kernels (kernels.h) are tested against them.
#pragma once
#include <cstdint>

namespace ndlm {

struct ConvShape {
    int N, Cin, H, W;  // input
    int Cout, KH, KW;  // filters
    int stride, pad;   // same in both directions; zero padding
    int OH, OW;        // output: (H + 2 pad - KH) / stride + 1
};

namespace ref {

// ---- batch normalization (per channel over N, H, W) ----------------------------------------
// x, y: (N, C, HW); gamma, beta: (C); mean, rstd: (C) saved for backward
void batchnorm_forward_train(float* y, float* mean, float* rstd, const float* x, const float* gamma,
                             const float* beta, int N, int C, int HW, float eps);
void batchnorm_forward_infer(float* y, const float* x, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, int N, int C, int HW,
                             float eps);
// dx: (N, C, HW) overwritten (may be null); dgamma, dbeta accumulated
void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* mean, const float* rstd, const float* gamma, int N, int C, int HW);

// ---- cross-channel (local response) normalization, odd window centred on the channel -------
// y_c = x_c / (k + alpha/size * sum_{|j-c| <= size/2} x_j^2)^beta   (PyTorch / ONNX LRN)
void lrn_forward(float* y, const float* x, int N, int C, int HW, int size, float alpha, float beta, float k);
void lrn_backward(float* dx, const float* dy, const float* x, int N, int C, int HW, int size, float alpha,
                  float beta, float k);

// ---- convolution (cross-correlation), zero padding -----------------------------------------
// x: (N, Cin, H, W); w: (Cout, Cin, KH, KW); b: (Cout); y: (N, Cout, OH, OW)
void conv_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s);
// dx overwritten (skipped when null); dw, db accumulated
void conv_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                   const ConvShape& s);

// ---- ReLU ----------------------------------------------------------------------------------
void relu_forward(float* y, const float* x, int64_t n);
// uses the output y (so the forward may run in place)
void relu_backward(float* dx, const float* dy, const float* y, int64_t n);

// ---- max pooling, window K, stride S, no padding, floor ------------------------------------
// x: (N, C, H, W); y, argmax: (N, C, OH, OW); argmax = index of the max inside the input plane
void maxpool_forward(float* y, int32_t* argmax, const float* x, int N, int C, int H, int W, int K, int S,
                     int OH, int OW);
// dx: (N, C, H, W) overwritten (windows may overlap when S < K)
void maxpool_backward(float* dx, const float* dy, const int32_t* argmax, int N, int C, int H, int W, int OH,
                      int OW);

// ---- fully connected -----------------------------------------------------------------------
// x: (N, F); w: (O, F); b: (O); y: (N, O)
void fc_forward(float* y, const float* x, const float* w, const float* b, int N, int F, int O);
// dx overwritten (skipped when null); dw, db accumulated
void fc_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int N,
                 int F, int O);

// ---- softmax + cross-entropy (mean over the batch) -----------------------------------------
// logits, probs, dlogits: (N, K); labels in [0, K). Returns the mean loss; dlogits = (p - 1_y)/N
float softmax_forward(float* probs, const float* logits, int N, int K);
float crossentropy_backward(float* dlogits, const float* probs, const int32_t* labels, int N, int K);

}  // namespace ref
}  // namespace ndlm
