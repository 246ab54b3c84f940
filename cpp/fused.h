// Fused pointwise segments: a run of batch norm / ReLU layers at one resolution, optionally
// followed by a non-overlapping max pool, computed in a few passes over the segment input X0
// instead of one read + one write per layer (see Network's planning step in network.cpp).
//
// Values: v_0 = X0, v_{i+1} = op_i(v_i). Gradients: g_nops = dY (dense, or the pooled gradient
// scattered to its argmax positions), g_i = op_i'(g_{i+1}). Every per-pixel formula is the one
// of the per-layer tuned kernel (same float operations in the same order), so the forward
// (statistics, outputs, argmax, running statistics) gives the same bits as the per-layer path;
// backward sums are blocked differently (and the last batch norm before a pool sums over the
// pooled outputs only), so gradients agree within float rounding. The per-layer path is the
// reference (tests/test_fused.py).
//
// Training forward: one pass over X0 per batch norm for its statistics (the earlier ops are
// recomputed on the fly), one pass applying the segment (+ pool). Backward: one pass over X0 per
// batch norm except the last one before a pool (whose sums come from the pooled outputs and the
// value saved at the argmax), one pass writing dX0.
#pragma once
#include <cstdint>

namespace ndlm {

struct SegOp {
    bool relu = false;  // ReLU; otherwise batch norm
    // batch norm, per channel. forward: y = (x - mean) * scale + shift
    const float* mean = nullptr;
    const float* scale = nullptr;  // gamma * rstd (training) or gamma / sqrt(var + eps) (inference)
    const float* shift = nullptr;  // beta
    // batch norm backward: dx = ka dy + kx (x - mean) + kb (needed for ops after the one whose
    // sums are computed, and for all of them in the final dX0 pass)
    const float* ka = nullptr;
    const float* kb = nullptr;
    const float* kx = nullptr;
};

struct SegShape {
    int N = 0, C = 0, H = 0, W = 0;    // segment input / output (before pooling), NCHW
    int K = 0, S = 0, OH = 0, OW = 0;  // max pool window == stride (non-overlapping); K = 0: no pooling
};

constexpr int kMaxSegOps = 16;  // longest segment the planner builds

}  // namespace ndlm
