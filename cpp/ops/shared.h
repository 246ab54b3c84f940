// Computations that two code paths must do with the same bits, written once. Plain functions with
// internal linkage (static), so each translation unit, whatever its -m flags, has its own copy:
// the per-ISA kernel units (kernels_impl.h) and network.cpp (fused segments) both include this.
#pragma once
#include <cstdint>

namespace ndlm {

// Parallel regions open only above this many units of work (elements read or written, or
// multiply-adds / 8 for the convolutions): below it waking the other threads (milliseconds when
// the machine is loaded) costs more than the work. The test depends only on shapes, so results
// still depend only on the thread count.
constexpr int64_t kParMinWork = int64_t(1) << 16;

// Batch-norm backward for channel c from the batch sums sdy = sum dy and sdx = sum dy (x - mean)
// over M values: accumulates dbeta, dgamma and returns the coefficients of
// dx = gamma rstd (dy - sdy/M - xhat sdyx/M) = ka dy + kx (x - mean) + kb.
// Used by the batchnorm_backward kernels and by the fused segments' backward (network.cpp).
static inline void bn_backward_coefs(double sdy, double sdx, float rstd, float gamma, double M, float* dgamma,
                                     float* dbeta, float* ka, float* kb, float* kx) {
    const double r = rstd;
    const double sdyx = sdx * r;  // sum dy * xhat
    *dbeta += float(sdy);
    *dgamma += float(sdyx);
    const double a = double(gamma) * r;
    *ka = float(a);
    *kb = float(-a * sdy / M);
    *kx = float(-a * r * sdyx / M);
}

}  // namespace ndlm
