// Reference batch normalization: plain loops, double accumulators where a sum runs over a whole batch
// (declared in layers.h, shapes in ops.def). Tuned twin: ops/batchnorm_simd.h.
#include "layers.h"

#include <cmath>

namespace ndlm {
namespace ref {

void batchnorm_forward_train(float* y, float* mean, float* rstd, const float* x, const float* gamma,
                             const float* beta, int N, int C, int HW, float eps) {
    const double M = double(N) * HW;
    for (int c = 0; c < C; c++) {
        double s = 0.0, ss = 0.0;
        for (int n = 0; n < N; n++) {
            const float* xp = x + (int64_t(n) * C + c) * HW;
            for (int i = 0; i < HW; i++) s += xp[i];
        }
        const double m = s / M;
        for (int n = 0; n < N; n++) {
            const float* xp = x + (int64_t(n) * C + c) * HW;
            for (int i = 0; i < HW; i++) ss += (xp[i] - m) * (xp[i] - m);
        }
        const double var = ss / M;  // biased: the variance used to normalize
        mean[c] = float(m);
        rstd[c] = float(1.0 / std::sqrt(var + eps));
        for (int n = 0; n < N; n++) {
            const float* xp = x + (int64_t(n) * C + c) * HW;
            float* yp = y + (int64_t(n) * C + c) * HW;
            // in double: (x - mean) and gamma rstd can leave float range on |x| ~ 1e38
            for (int i = 0; i < HW; i++)
                yp[i] = float(double(gamma[c]) * ((double(xp[i]) - mean[c]) * double(rstd[c])) + double(beta[c]));
        }
    }
}

void batchnorm_forward_infer(float* y, const float* x, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, int N, int C, int HW,
                             float eps) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            const float scale = gamma[c] / std::sqrt(running_var[c] + eps);
            const float* xp = x + (int64_t(n) * C + c) * HW;
            float* yp = y + (int64_t(n) * C + c) * HW;
            for (int i = 0; i < HW; i++) yp[i] = (xp[i] - running_mean[c]) * scale + beta[c];
        }
}

void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* mean, const float* rstd, const float* gamma, int N, int C, int HW) {
    const double M = double(N) * HW;
    for (int c = 0; c < C; c++) {
        double sdy = 0.0, sdyx = 0.0;  // sum dy, sum dy * xhat
        for (int n = 0; n < N; n++) {
            const int64_t o = (int64_t(n) * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                sdy += dy[o + i];
                sdyx += double(dy[o + i]) * ((double(x[o + i]) - mean[c]) * double(rstd[c]));
            }
        }
        dbeta[c] += float(sdy);
        dgamma[c] += float(sdyx);
        if (!dx) continue;
        // dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat))
        for (int n = 0; n < N; n++) {
            const int64_t o = (int64_t(n) * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                const double xhat = (double(x[o + i]) - mean[c]) * double(rstd[c]);
                dx[o + i] = float(double(gamma[c]) * double(rstd[c]) * (dy[o + i] - sdy / M - xhat * sdyx / M));
            }
        }
    }
}

}  // namespace ref
}  // namespace ndlm
