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
// obvious loops, no SIMD, no threads, one file per op (ops/<op>_ref.cpp). The tuned kernels
// (kernels.h) are tested against them.
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

// The layer kernels, listed with their shapes in ops.def (bodies: ops/<op>_ref.cpp)
#define NDLM_OP(name, params, args) void name params;
#define NDLM_SEG_OP(name, params, args)
#include "ops.def"

// ---- softmax + cross-entropy (mean over the batch) -----------------------------------------
// logits, probs, dlogits: (N, K); labels in [0, K). crossentropy_backward returns the mean loss
// and writes dlogits = (p - 1_y) / N (skipped when null). With per-sample weights w (null: all 1):
// the weighted mean sum_n w_n loss_n / sum_n w_n and dlogits = w_n (p - 1_y) / sum_n w_n (zero
// loss and gradient when the weights sum to 0); weights 1 give the unweighted bits.
void softmax_forward(float* probs, const float* logits, int N, int K);
float crossentropy_backward(float* dlogits, const float* probs, const int32_t* labels, int N, int K,
                            const float* weights = nullptr);

}  // namespace ref
}  // namespace ndlm
