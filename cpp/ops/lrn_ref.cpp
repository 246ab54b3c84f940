// Reference cross-channel LRN: plain loops, double accumulators where a sum runs over a whole batch
// (declared in layers.h, shapes in ops.def). Tuned twin: ops/lrn_simd.h.
#include "layers.h"

#include <algorithm>
#include <cmath>

namespace ndlm {
namespace ref {

static inline double lrn_scale(const float* x, int c, int C, int HW, int i, int size, float alpha, float k) {
    const int h = size / 2;
    double s = 0.0;
    for (int j = std::max(0, c - h); j <= std::min(C - 1, c + h); j++)
        s += double(x[int64_t(j) * HW + i]) * x[int64_t(j) * HW + i];
    return k + alpha / size * s;
}

void lrn_forward(float* y, const float* x, int N, int C, int HW, int size, float alpha, float beta, float k) {
    for (int n = 0; n < N; n++) {
        const float* xn = x + int64_t(n) * C * HW;
        float* yn = y + int64_t(n) * C * HW;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++)
                yn[int64_t(c) * HW + i] = float(xn[int64_t(c) * HW + i] *
                                                std::pow(lrn_scale(xn, c, C, HW, i, size, alpha, k), -beta));
    }
}

void lrn_backward(float* dx, const float* dy, const float* x, int N, int C, int HW, int size, float alpha,
                  float beta, float k) {
    // dx_i = dy_i s_i^-b - (2 a b / size) x_i sum_{c in window(i)} dy_c x_c s_c^(-b-1)
    const int h = size / 2;
    for (int n = 0; n < N; n++) {
        const int64_t o = int64_t(n) * C * HW;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++) {
                double acc = 0.0;
                for (int j = std::max(0, c - h); j <= std::min(C - 1, c + h); j++) {
                    const double sj = lrn_scale(x + o, j, C, HW, i, size, alpha, k);
                    acc += double(dy[o + int64_t(j) * HW + i]) * x[o + int64_t(j) * HW + i] *
                           std::pow(sj, -beta - 1.0);
                }
                const double si = lrn_scale(x + o, c, C, HW, i, size, alpha, k);
                const int64_t p = o + int64_t(c) * HW + i;
                dx[p] = float(dy[p] * std::pow(si, -beta) - 2.0 * alpha * beta / size * x[p] * acc);
            }
    }
}

}  // namespace ref
}  // namespace ndlm
