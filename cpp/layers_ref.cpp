// Reference layers: plain loops, double accumulators where a sum runs over a whole batch.
#include "layers.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace ndlm {
namespace ref {

// ---------------------------------------------------------------------------------------------
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
            for (int i = 0; i < HW; i++) yp[i] = gamma[c] * (xp[i] - mean[c]) * rstd[c] + beta[c];
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
                sdyx += double(dy[o + i]) * (x[o + i] - mean[c]) * rstd[c];
            }
        }
        dbeta[c] += float(sdy);
        dgamma[c] += float(sdyx);
        if (!dx) continue;
        // dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat))
        for (int n = 0; n < N; n++) {
            const int64_t o = (int64_t(n) * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                const double xhat = (x[o + i] - mean[c]) * rstd[c];
                dx[o + i] = float(gamma[c] * rstd[c] * (dy[o + i] - sdy / M - xhat * sdyx / M));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
void conv_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s) {
    for (int n = 0; n < s.N; n++)
        for (int co = 0; co < s.Cout; co++)
            for (int oy = 0; oy < s.OH; oy++)
                for (int ox = 0; ox < s.OW; ox++) {
                    double acc = b ? b[co] : 0.0;
                    for (int ci = 0; ci < s.Cin; ci++)
                        for (int ky = 0; ky < s.KH; ky++) {
                            const int iy = oy * s.stride - s.pad + ky;
                            if (iy < 0 || iy >= s.H) continue;
                            for (int kx = 0; kx < s.KW; kx++) {
                                const int ix = ox * s.stride - s.pad + kx;
                                if (ix < 0 || ix >= s.W) continue;
                                acc += double(x[((int64_t(n) * s.Cin + ci) * s.H + iy) * s.W + ix]) *
                                       w[((int64_t(co) * s.Cin + ci) * s.KH + ky) * s.KW + kx];
                            }
                        }
                    y[((int64_t(n) * s.Cout + co) * s.OH + oy) * s.OW + ox] = float(acc);
                }
}

void conv_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                   const ConvShape& s) {
    if (dx) std::memset(dx, 0, sizeof(float) * size_t(s.N) * s.Cin * s.H * s.W);
    for (int co = 0; co < s.Cout; co++) {
        double sdb = 0.0;
        for (int n = 0; n < s.N; n++)
            for (int i = 0; i < s.OH * s.OW; i++) sdb += dy[(int64_t(n) * s.Cout + co) * s.OH * s.OW + i];
        if (db) db[co] += float(sdb);
        for (int ci = 0; ci < s.Cin; ci++)
            for (int ky = 0; ky < s.KH; ky++)
                for (int kx = 0; kx < s.KW; kx++) {
                    double acc = 0.0;
                    const float wv = w[((int64_t(co) * s.Cin + ci) * s.KH + ky) * s.KW + kx];
                    for (int n = 0; n < s.N; n++)
                        for (int oy = 0; oy < s.OH; oy++) {
                            const int iy = oy * s.stride - s.pad + ky;
                            if (iy < 0 || iy >= s.H) continue;
                            for (int ox = 0; ox < s.OW; ox++) {
                                const int ix = ox * s.stride - s.pad + kx;
                                if (ix < 0 || ix >= s.W) continue;
                                const float g = dy[((int64_t(n) * s.Cout + co) * s.OH + oy) * s.OW + ox];
                                const int64_t xi = ((int64_t(n) * s.Cin + ci) * s.H + iy) * s.W + ix;
                                acc += double(g) * x[xi];
                                if (dx) dx[xi] += g * wv;
                            }
                        }
                    dw[((int64_t(co) * s.Cin + ci) * s.KH + ky) * s.KW + kx] += float(acc);
                }
    }
}

// ---------------------------------------------------------------------------------------------
void relu_forward(float* y, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.f ? x[i] : 0.f;
}
void relu_backward(float* dx, const float* dy, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}

// ---------------------------------------------------------------------------------------------
void maxpool_forward(float* y, int32_t* argmax, const float* x, int N, int C, int H, int W, int K, int S,
                     int OH, int OW) {
    for (int64_t p = 0; p < int64_t(N) * C; p++) {
        const float* xp = x + p * H * W;
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) {
                float best = -std::numeric_limits<float>::infinity();
                int32_t bi = (oy * S) * W + ox * S;
                for (int ky = 0; ky < K; ky++)
                    for (int kx = 0; kx < K; kx++) {
                        const int32_t i = (oy * S + ky) * W + ox * S + kx;
                        if (xp[i] > best) {
                            best = xp[i];
                            bi = i;
                        }
                    }
                y[p * OH * OW + oy * OW + ox] = best;
                argmax[p * OH * OW + oy * OW + ox] = bi;
            }
    }
}
void maxpool_backward(float* dx, const float* dy, const int32_t* argmax, int N, int C, int H, int W, int OH,
                      int OW) {
    std::memset(dx, 0, sizeof(float) * size_t(N) * C * H * W);
    for (int64_t p = 0; p < int64_t(N) * C; p++)
        for (int i = 0; i < OH * OW; i++) dx[p * H * W + argmax[p * OH * OW + i]] += dy[p * OH * OW + i];
}

// ---------------------------------------------------------------------------------------------
void fc_forward(float* y, const float* x, const float* w, const float* b, int N, int F, int O) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++) {
            double acc = b[o];
            for (int f = 0; f < F; f++) acc += double(x[int64_t(n) * F + f]) * w[int64_t(o) * F + f];
            y[int64_t(n) * O + o] = float(acc);
        }
}
void fc_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int N,
                 int F, int O) {
    for (int o = 0; o < O; o++) {
        double sdb = 0.0;
        for (int n = 0; n < N; n++) sdb += dy[int64_t(n) * O + o];
        db[o] += float(sdb);
        for (int f = 0; f < F; f++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++) acc += double(dy[int64_t(n) * O + o]) * x[int64_t(n) * F + f];
            dw[int64_t(o) * F + f] += float(acc);
        }
    }
    if (dx)
        for (int n = 0; n < N; n++)
            for (int f = 0; f < F; f++) {
                double acc = 0.0;
                for (int o = 0; o < O; o++) acc += double(dy[int64_t(n) * O + o]) * w[int64_t(o) * F + f];
                dx[int64_t(n) * F + f] = float(acc);
            }
}

// ---------------------------------------------------------------------------------------------
float softmax_forward(float* probs, const float* logits, int N, int K) {
    for (int n = 0; n < N; n++) {
        const float* l = logits + int64_t(n) * K;
        float* p = probs + int64_t(n) * K;
        float mx = l[0];
        for (int k = 1; k < K; k++) mx = std::max(mx, l[k]);
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += std::exp(double(l[k]) - mx);
        for (int k = 0; k < K; k++) p[k] = float(std::exp(double(l[k]) - mx) / sum);
    }
    return 0.f;
}
float crossentropy_backward(float* dlogits, const float* probs, const int32_t* labels, int N, int K) {
    double loss = 0.0;
    for (int n = 0; n < N; n++) {
        const float* p = probs + int64_t(n) * K;
        loss -= std::log(std::max(double(p[labels[n]]), 1e-30));
        if (dlogits)
            for (int k = 0; k < K; k++)
                dlogits[int64_t(n) * K + k] = (p[k] - (k == labels[n] ? 1.f : 0.f)) / N;
    }
    return float(loss / N);
}

}  // namespace ref
}  // namespace ndlm
