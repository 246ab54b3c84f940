// Bodies of the tuned kernels, written once against the SIMD abstraction of simd.h and compiled
// once per instruction set: kernels_generic.cpp (baseline x86-64 / scalar), kernels_avx2.cpp
// (-mavx2 -mfma) and kernels_avx512.cpp (-mavx512f -mavx512bw -mavx512vl). Each unit defines
// NDLM_ISA_NS before including this file; everything below lives in an anonymous namespace inside
// it, so no symbol compiled with one instruction set can be picked by the linker for another.
// For the same reason this file uses no out-of-line std:: templates (no std::vector, std::min):
// a weak instantiation emitted by the AVX-512 unit could otherwise be shared with the others.
//
// Conventions (as the reference in layers_ref.cpp): parameter gradients accumulate (+=), input
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
#include "simd.h"

namespace ndlm {
namespace NDLM_ISA_NS {
namespace {

using R = Simd::R;
constexpr int V = Simd::V;

// ---- small helpers ---------------------------------------------------------------------------
inline int mini(int a, int b) { return a < b ? a : b; }
inline int maxi(int a, int b) { return a > b ? a : b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

// Heap buffer, 64-byte aligned, not initialised (zeroed with zero = true).
template <class T>
struct Buf {
    T* p = nullptr;
    explicit Buf(int64_t n, bool zero = false) {
        const size_t bytes = size_t(round_up(n > 0 ? n * int64_t(sizeof(T)) : 64, 64));
        void* q = nullptr;
        // never a null buffer: outside a parallel region this reaches Python as MemoryError
        if (posix_memalign(&q, 64, bytes) != 0) throw std::bad_alloc();
        p = static_cast<T*>(q);
        if (zero) std::memset(p, 0, bytes);
    }
    ~Buf() { std::free(p); }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;
    T& operator[](int64_t i) { return p[i]; }
    const T& operator[](int64_t i) const { return p[i]; }
};

// Contiguous static share [b, e) of `total` items for thread `tid` of `nth`.
inline void split_range(int64_t total, int nth, int tid, int64_t* b, int64_t* e) {
    *b = total * tid / nth;
    *e = total * (tid + 1) / nth;
}

// Parallel regions open only above PAR_MIN_WORK units of work (elements read or written, or
// multiply-adds / 8 for the convolutions): below it waking the other threads (milliseconds when
// the machine is loaded) costs more than the work. The test depends only on shapes, so results
// still depend only on the thread count (with the if false a region runs with one thread and the
// static splits see nth = 1).
constexpr int64_t PAR_MIN_WORK = int64_t(1) << 16;
inline bool par_work(int64_t work) { return work >= PAR_MIN_WORK; }

// ---- blocked reductions over one plane: float SIMD inside chunks, double across chunks --------
constexpr int64_t RCHUNK = 1024;

inline double sum_f(const float* x, int64_t n) {
    double tot = 0.0;
    for (int64_t b = 0; b < n; b += RCHUNK) {
        const int64_t e = min64(n, b + RCHUNK);
        R a0 = Simd::zero(), a1 = Simd::zero();
        int64_t i = b;
        for (; i + 2 * V <= e; i += 2 * V) {
            a0 = Simd::add(a0, Simd::load(x + i));
            a1 = Simd::add(a1, Simd::load(x + i + V));
        }
        for (; i + V <= e; i += V) a0 = Simd::add(a0, Simd::load(x + i));
        if (i < e) a1 = Simd::add(a1, Simd::loadp(x + i, int(e - i)));
        tot += double(Simd::hsum(Simd::add(a0, a1)));
    }
    return tot;
}

// sum (x - m)^2
inline double sqdev_f(const float* x, int64_t n, float m) {
    double tot = 0.0;
    const R mv = Simd::set1(m);
    for (int64_t b = 0; b < n; b += RCHUNK) {
        const int64_t e = min64(n, b + RCHUNK);
        R a0 = Simd::zero(), a1 = Simd::zero();
        int64_t i = b;
        for (; i + 2 * V <= e; i += 2 * V) {
            const R d0 = Simd::sub(Simd::load(x + i), mv), d1 = Simd::sub(Simd::load(x + i + V), mv);
            a0 = Simd::fma(d0, d0, a0);
            a1 = Simd::fma(d1, d1, a1);
        }
        for (; i + V <= e; i += V) {
            const R d0 = Simd::sub(Simd::load(x + i), mv);
            a0 = Simd::fma(d0, d0, a0);
        }
        float ts = 0.f;
        for (; i < e; i++) {
            const float d = x[i] - m;
            ts += d * d;
        }
        tot += double(ts);
        tot += double(Simd::hsum(Simd::add(a0, a1)));
    }
    return tot;
}

// sum dy and sum dy * (x - m)
inline void dydev_f(const float* dy, const float* x, int64_t n, float m, double* sdy, double* sdyx) {
    double t0 = 0.0, t1 = 0.0;
    const R mv = Simd::set1(m);
    for (int64_t b = 0; b < n; b += RCHUNK) {
        const int64_t e = min64(n, b + RCHUNK);
        R a0 = Simd::zero(), a1 = Simd::zero(), c0 = Simd::zero(), c1 = Simd::zero();
        int64_t i = b;
        for (; i + 2 * V <= e; i += 2 * V) {
            const R g0 = Simd::load(dy + i), g1 = Simd::load(dy + i + V);
            a0 = Simd::add(a0, g0);
            a1 = Simd::add(a1, g1);
            c0 = Simd::fma(g0, Simd::sub(Simd::load(x + i), mv), c0);
            c1 = Simd::fma(g1, Simd::sub(Simd::load(x + i + V), mv), c1);
        }
        for (; i + V <= e; i += V) {
            const R g0 = Simd::load(dy + i);
            a0 = Simd::add(a0, g0);
            c0 = Simd::fma(g0, Simd::sub(Simd::load(x + i), mv), c0);
        }
        if (i < e) {  // masked dy lanes are 0, so the product vanishes there too
            const int k = int(e - i);
            const R g1 = Simd::loadp(dy + i, k);
            a1 = Simd::add(a1, g1);
            c1 = Simd::fma(g1, Simd::sub(Simd::loadp(x + i, k), mv), c1);
        }
        t0 += double(Simd::hsum(Simd::add(a0, a1)));
        t1 += double(Simd::hsum(Simd::add(c0, c1)));
    }
    *sdy = t0;
    *sdyx = t1;
}

// ---- elementwise passes -------------------------------------------------------------------
// Outputs larger than NT_BYTES (the whole tensor) are written with non-temporal stores: they
// cannot stay in cache for the next layer anyway, and streaming skips the read-for-ownership
// (measured here: 37 vs 23 GB/s for a copy on one core).
constexpr int64_t NT_BYTES = int64_t(24) << 20;

inline R ldk(const float* p, int k) { return k == V ? Simd::load(p) : Simd::loadp(p, k); }

// y[i, i + k) = f(i, k) for i in [0, n); f returns the vector of lanes [i, i + k) (k <= V)
template <class F>
inline void map_vec(float* y, int64_t n, bool nt, F f) {
    int64_t i = 0;
    if (nt && V > 1) {
        const int64_t mis = int64_t(reinterpret_cast<uintptr_t>(y) % (V * sizeof(float)));
        if (mis % sizeof(float) == 0) {
            int64_t head = mis ? (int64_t(V * sizeof(float)) - mis) / int64_t(sizeof(float)) : 0;
            if (head > n) head = n;
            if (head > 0) {
                Simd::storep(y, f(int64_t(0), int(head)), int(head));
                i = head;
            }
            for (; i + V <= n; i += V) Simd::stream(y + i, f(i, V));
            Simd::stream_fence();
        }
    }
    for (; i + V <= n; i += V) Simd::store(y + i, f(i, V));
    if (i < n) Simd::storep(y + i, f(i, int(n - i)), int(n - i));
}

// Chan et al.: combine per-plane means pm and centred sums of squares pq of (N, C) planes of HW
// values into per-channel mean and 1 / sqrt(var + eps), planes of a channel in batch order
inline void bn_combine(float* mean, float* rstd, const double* pm, const double* pq, int N, int C, int64_t HW,
                       float eps) {
    for (int c = 0; c < C; c++) {
        double cnt = 0.0, mu = 0.0, m2 = 0.0;
        for (int n = 0; n < N; n++) {
            const int64_t p = int64_t(n) * C + c;
            const double nb = double(HW), tot = cnt + nb;
            if (tot <= 0) continue;
            const double d = pm[p] - mu;
            mu += d * nb / tot;
            m2 += pq[p] + d * d * cnt * nb / tot;
            cnt = tot;
        }
        const double var = cnt > 0 ? (m2 > 0 ? m2 : 0.0) / cnt : 0.0 / 0.0;
        mean[c] = float(cnt > 0 ? mu : 0.0 / 0.0);
        rstd[c] = float(1.0 / std::sqrt(var + eps));
    }
}

// =============================================================================================
// Batch normalization
// =============================================================================================
void batchnorm_forward_train(float* y, float* mean, float* rstd, const float* x, const float* gamma,
                             const float* beta, int N, int C, int HW, float eps) {
    const int64_t P = int64_t(N) * C;
    const bool nt = P * HW * int64_t(sizeof(float)) > NT_BYTES;
    Buf<double> pm(P), pq(P);  // per-plane mean and centred sum of squares
#pragma omp parallel if (par_work(P * HW))
    {
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++) {
            const float* xp = x + p * HW;
            const double m = HW > 0 ? sum_f(xp, HW) / HW : 0.0;
            const float mf = float(m);
            // centre on the float mean (the plane is still in cache), correct for the rounding
            pq[p] = sqdev_f(xp, HW, mf) - double(HW) * (m - mf) * (m - mf);
            pm[p] = m;
        }
    }
    bn_combine(mean, rstd, pm.p, pq.p, N, C, HW, eps);
#pragma omp parallel if (par_work(P * HW))
    {
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++) {
            const int c = int(p % C);
            const R mc = Simd::set1(mean[c]), sc = Simd::set1(gamma[c] * rstd[c]), bc = Simd::set1(beta[c]);
            const float* xp = x + p * HW;
            map_vec(y + p * HW, HW, nt,
                    [&](int64_t i, int k) { return Simd::fma(Simd::sub(ldk(xp + i, k), mc), sc, bc); });
        }
    }
}

void batchnorm_forward_infer(float* y, const float* x, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, int N, int C, int HW,
                             float eps) {
    const int64_t P = int64_t(N) * C;
    const bool nt = P * HW * int64_t(sizeof(float)) > NT_BYTES;
#pragma omp parallel if (par_work(P * HW))
    {
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++) {
            const int c = int(p % C);
            const R sc = Simd::set1(gamma[c] / std::sqrt(running_var[c] + eps));
            const R mc = Simd::set1(running_mean[c]), bc = Simd::set1(beta[c]);
            const float* xp = x + p * HW;
            map_vec(y + p * HW, HW, nt,
                    [&](int64_t i, int k) { return Simd::fma(Simd::sub(ldk(xp + i, k), mc), sc, bc); });
        }
    }
}

void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* mean, const float* rstd, const float* gamma, int N, int C, int HW) {
    const int64_t P = int64_t(N) * C;
    Buf<double> ps(P), pd(P);
#pragma omp parallel if (par_work(P * HW))
    {
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++) dydev_f(dy + p * HW, x + p * HW, HW, mean[p % C], &ps[p], &pd[p]);
    }
    Buf<float> ka(C), kb(C), kx(C);
    const double M = double(N) * HW;
    for (int c = 0; c < C; c++) {
        double sdy = 0.0, sdx = 0.0;
        for (int n = 0; n < N; n++) {
            sdy += ps[int64_t(n) * C + c];
            sdx += pd[int64_t(n) * C + c];
        }
        const double r = rstd[c];
        const double sdyx = sdx * r;  // sum dy * xhat
        dbeta[c] += float(sdy);
        dgamma[c] += float(sdyx);
        // dx = gamma rstd (dy - sdy/M - xhat sdyx/M) = a dy + kx (x - mean) + b
        const double a = double(gamma[c]) * r;
        ka[c] = float(a);
        kb[c] = float(-a * sdy / M);
        kx[c] = float(-a * r * sdyx / M);
    }
    if (!dx) return;
    const bool nt = P * HW * int64_t(sizeof(float)) > NT_BYTES;
#pragma omp parallel if (par_work(P * HW))
    {
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++) {
            const int c = int(p % C);
            const R a = Simd::set1(ka[c]), bb = Simd::set1(kb[c]), kk = Simd::set1(kx[c]),
                    m = Simd::set1(mean[c]);
            const float* dyp = dy + p * HW;
            const float* xp = x + p * HW;
            map_vec(dx + p * HW, HW, nt, [&](int64_t i, int k) {
                return Simd::fma(a, ldk(dyp + i, k), Simd::fma(kk, Simd::sub(ldk(xp + i, k), m), bb));
            });
        }
    }
}

// =============================================================================================
// LRN across channels. Pixels are processed in chunks; per chunk the squares of all channels sit
// in a small scratch, window sums run over channels with unit-stride pixel loops.
// =============================================================================================
constexpr int LRN_CHUNK = 512;

inline R rsqrt_nr(R x) {  // 1/sqrt(x), one Newton step on the hardware estimate
    const R y = Simd::rsqrt_approx(x);
    const R hx = Simd::mul(Simd::set1(0.5f), x);
    return Simd::mul(y, Simd::sub(Simd::set1(1.5f), Simd::mul(hx, Simd::mul(y, y))));
}

// pw[i] = (k + a * s[i])^-beta and, when inv is not null, inv[i] = 1 / (k + a * s[i]);
// vectorised for beta 0.75 (x^-3/4 = r * r * rsqrt(r) with r = rsqrt(x)), 0.5 and 1.
inline void lrn_pow(float* pw, float* inv, const float* s, int n, float k, float a, float beta) {
    const int fast = beta == 0.75f ? 1 : beta == 0.5f ? 2 : beta == 1.f ? 3 : 0;
    if (fast) {
        const R kv = Simd::set1(k), av = Simd::set1(a);
        for (int i = 0; i < n; i += V) {
            const int m = mini(V, n - i);
            const R t = Simd::fma(av, ldk(s + i, m), kv);
            const R r = rsqrt_nr(t), r2 = Simd::mul(r, r);
            const R p = fast == 1 ? Simd::mul(r2, rsqrt_nr(r)) : fast == 2 ? r : r2;
            Simd::storep(pw + i, p, m);  // scratch is padded: full-width stores are fine too
            if (inv) Simd::storep(inv + i, r2, m);
        }
        return;
    }
    for (int i = 0; i < n; i++) {
        const double t = double(k + a * s[i]);
        pw[i] = float(std::pow(t, -double(beta)));
        if (inv) inv[i] = float(1.0 / t);
    }
}

// wsum[i] = sum_{j in window(c)} src[j * ld + i]
inline void lrn_window(float* wsum, const float* src, int64_t ld, int c, int C, int h, int n) {
    const int lo = maxi(0, c - h), hi = mini(C - 1, c + h);
    const float* s0 = src + int64_t(lo) * ld;
    for (int i = 0; i < n; i++) wsum[i] = s0[i];
    for (int j = lo + 1; j <= hi; j++) {
        const float* sj = src + int64_t(j) * ld;
        for (int i = 0; i < n; i++) wsum[i] += sj[i];
    }
}

// Channel c's window is channel c-1's (both clipped to all C channels, e.g. NDLM's 3 input
// channels with size 5): the window sum and its power can be reused.
inline bool lrn_same_window(int c, int C, int h) {
    return c > 0 && maxi(0, c - h) == maxi(0, c - 1 - h) && mini(C - 1, c + h) == mini(C - 1, c - 1 + h);
}

void lrn_forward(float* y, const float* x, int N, int C, int HW, int size, float alpha, float beta, float k) {
    const int h = size / 2;
    const float a = alpha / size;
    const int64_t nch = cdiv(HW, LRN_CHUNK), items = int64_t(N) * nch;
    const bool nt = items * C * LRN_CHUNK * int64_t(sizeof(float)) > NT_BYTES;
#pragma omp parallel if (par_work(int64_t(N) * C * HW))
    {
        Buf<float> sq(int64_t(C) * LRN_CHUNK), ws(LRN_CHUNK), pw(LRN_CHUNK);
        int64_t b, e;
        split_range(items, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t it = b; it < e; it++) {
            const int64_t n = it / nch;
            const int i0 = int(it % nch) * LRN_CHUNK, len = mini(LRN_CHUNK, HW - i0);
            const float* xn = x + n * C * HW + i0;
            float* yn = y + n * C * HW + i0;
            for (int c = 0; c < C; c++) {
                const float* xc = xn + int64_t(c) * HW;
                float* s = sq.p + int64_t(c) * LRN_CHUNK;
                for (int i = 0; i < len; i++) s[i] = xc[i] * xc[i];
            }
            for (int c = 0; c < C; c++) {
                if (!lrn_same_window(c, C, h)) {  // few channels: every window is the same one
                    lrn_window(ws.p, sq.p, LRN_CHUNK, c, C, h, len);
                    lrn_pow(pw.p, nullptr, ws.p, len, k, a, beta);
                }
                const float* xc = xn + int64_t(c) * HW;
                const float* pp = pw.p;
                map_vec(yn + int64_t(c) * HW, len, nt,
                        [&](int64_t i, int kk) { return Simd::mul(ldk(xc + i, kk), ldk(pp + i, kk)); });
            }
        }
    }
}

void lrn_backward(float* dx, const float* dy, const float* x, int N, int C, int HW, int size, float alpha,
                  float beta, float k) {
    // dx_c = dy_c s_c^-b - (2 a b / size) x_c sum_{j in window(c)} dy_j x_j s_j^(-b-1)
    const int h = size / 2;
    const float a = alpha / size;
    const float coef = 2.f * alpha * beta / size;
    const int64_t nch = cdiv(HW, LRN_CHUNK), items = int64_t(N) * nch;
    const bool nt = items * C * LRN_CHUNK * int64_t(sizeof(float)) > NT_BYTES;
#pragma omp parallel if (par_work(int64_t(N) * C * HW))
    {
        Buf<float> sq(int64_t(C) * LRN_CHUNK), pw(int64_t(C) * LRN_CHUNK), t(int64_t(C) * LRN_CHUNK),
            ws(LRN_CHUNK), inv(LRN_CHUNK);
        int64_t b, e;
        split_range(items, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t it = b; it < e; it++) {
            const int64_t n = it / nch;
            const int i0 = int(it % nch) * LRN_CHUNK, len = mini(LRN_CHUNK, HW - i0);
            const int64_t o = n * C * HW + i0;
            for (int c = 0; c < C; c++) {
                const float* xc = x + o + int64_t(c) * HW;
                float* s = sq.p + int64_t(c) * LRN_CHUNK;
                for (int i = 0; i < len; i++) s[i] = xc[i] * xc[i];
            }
            for (int c = 0; c < C; c++) {
                float* p = pw.p + int64_t(c) * LRN_CHUNK;
                if (lrn_same_window(c, C, h)) {
                    std::memcpy(p, p - LRN_CHUNK, sizeof(float) * size_t(len));  // inv is unchanged too
                } else {
                    lrn_window(ws.p, sq.p, LRN_CHUNK, c, C, h, len);
                    lrn_pow(p, inv.p, ws.p, len, k, a, beta);
                }
                const float* xc = x + o + int64_t(c) * HW;
                const float* gc = dy + o + int64_t(c) * HW;
                float* tc = t.p + int64_t(c) * LRN_CHUNK;
                for (int i = 0; i < len; i++) tc[i] = gc[i] * xc[i] * p[i] * inv[i];
            }
            for (int c = 0; c < C; c++) {
                if (!lrn_same_window(c, C, h)) lrn_window(ws.p, t.p, LRN_CHUNK, c, C, h, len);
                const float* p = pw.p + int64_t(c) * LRN_CHUNK;
                const float* xc = x + o + int64_t(c) * HW;
                const float* gc = dy + o + int64_t(c) * HW;
                const float* wsp = ws.p;
                const R cf = Simd::set1(-coef);
                map_vec(dx + o + int64_t(c) * HW, len, nt, [&](int64_t i, int kk) {
                    return Simd::fma(Simd::mul(cf, ldk(xc + i, kk)), ldk(wsp + i, kk),
                                     Simd::mul(ldk(gc + i, kk), ldk(p + i, kk)));
                });
            }
        }
    }
}

// =============================================================================================
// ReLU
// =============================================================================================
void relu_forward(float* y, const float* x, int64_t n) {
#pragma omp parallel if (par_work(n))
    {
        int64_t b, e;
        split_range(n, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        const R z = Simd::zero();
        const float* xb = x + b;
        // max(x, 0) returns 0 for NaN and +0 for -0, as x > 0 ? x : 0
        map_vec(y + b, e - b, n * int64_t(sizeof(float)) > NT_BYTES,
                [&](int64_t i, int k) { return Simd::max(ldk(xb + i, k), z); });
    }
}
void relu_backward(float* dx, const float* dy, const float* y, int64_t n) {
#pragma omp parallel if (par_work(n))
    {
        int64_t b, e;
        split_range(n, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        const float *yb = y + b, *gb = dy + b;
        map_vec(dx + b, e - b, n * int64_t(sizeof(float)) > NT_BYTES,
                [&](int64_t i, int k) { return Simd::sel_gt0(ldk(yb + i, k), ldk(gb + i, k)); });
    }
}

// =============================================================================================
// Max pooling: per output row, a vertical pass (max over the K rows, vectorised over columns,
// remembering the first row of the maximum) then a horizontal pass over the K columns of each
// window. Ties resolve to the first element in row-major window order, exactly as the reference.
// =============================================================================================
// One plane: x (rows of W) -> y, argmax (OH x OW). m, kk: scratch of pool_scratch_len floats,
// zero-initialised once; tk, tx: V floats.
inline int64_t pool_scratch_len(int K, int S, int OW) { return (int64_t(OW) + V) * S + K; }
inline void pool_plane(float* yp, int32_t* ap, const float* xp, int W, int K, int S, int OH, int OW, float* m,
                       float* kk, float* tk, float* tx) {
    const int Wn = (OW - 1) * S + K;  // columns touched
    const float NEG = -__builtin_inff();
    for (int oy = 0; oy < OH; oy++) {
        const int r0 = oy * S;
        for (int i = 0; i < Wn; i++) {
            m[i] = NEG;
            kk[i] = 0.f;
        }
        for (int ky = 0; ky < K; ky++) {
            const float* row = xp + int64_t(r0 + ky) * W;
            const float fky = float(ky);
            for (int i = 0; i < Wn; i++) {
                const float v = row[i];
                const bool g = v > m[i];
                m[i] = g ? v : m[i];
                kk[i] = g ? fky : kk[i];
            }
        }
        // horizontal, vectorised over output columns with stride-S gathers. The first
        // maximum in row-major window order wins: larger value, then smaller row, then
        // (scanning kx upwards, strict) smaller column. A column of -inf / NaN keeps
        // row 0, so an all -inf window points at its start, like the reference.
        for (int ox0 = 0; ox0 < OW; ox0 += V) {
            const int nv = mini(V, OW - ox0);
            const float* mb = m + int64_t(ox0) * S;
            const float* kb = kk + int64_t(ox0) * S;
            R best = Simd::gather(mb, S), bk = Simd::gather(kb, S), bx = Simd::zero();
            for (int kx = 1; kx < K; kx++) {
                const R v = Simd::gather(mb + kx, S), k2 = Simd::gather(kb + kx, S);
                const auto take =
                    Simd::mor(Simd::gt(v, best), Simd::mand(Simd::eq(v, best), Simd::lt(k2, bk)));
                best = Simd::blend(take, v, best);
                bk = Simd::blend(take, k2, bk);
                bx = Simd::blend(take, Simd::set1(float(kx)), bx);
            }
            Simd::storep(yp + oy * OW + ox0, best, nv);
            Simd::store(tk, bk);
            Simd::store(tx, bx);
            int32_t* aq = ap + oy * OW + ox0;
            for (int j = 0; j < nv; j++) aq[j] = (r0 + int(tk[j])) * W + (ox0 + j) * S + int(tx[j]);
        }
    }
}

void maxpool_forward(float* y, int32_t* argmax, const float* x, int N, int C, int H, int W, int K, int S,
                     int OH, int OW) {
    const int64_t P = int64_t(N) * C;
    if (OH <= 0 || OW <= 0) return;
#pragma omp parallel if (par_work(P * H * W))
    {
        // vertical results, padded so the gathers of the last partial vector stay inside
        const int64_t Wpad = pool_scratch_len(K, S, OW);
        Buf<float> vm(Wpad, true), vk(Wpad, true);  // ky kept as float: exact, and blends as float
        Buf<float> tk(V), tx(V);
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++)
            pool_plane(y + p * OH * OW, argmax + p * OH * OW, x + p * H * W, W, K, S, OH, OW, vm.p, vk.p,
                       tk.p, tx.p);
    }
}

void maxpool_backward(float* dx, const float* dy, const int32_t* argmax, int N, int C, int H, int W, int OH,
                      int OW) {
    const int64_t P = int64_t(N) * C, HW = int64_t(H) * W, OHW = int64_t(OH) * OW;
    const bool nt = P * HW * int64_t(sizeof(float)) > NT_BYTES;
    // Band of rows owned by output row oy when windows do not overlap vertically: argmax rows of
    // output row oy lie in [oy * S, oy * S + K) and those bands are disjoint when S >= K. S and K
    // are not passed, so recover the row band from the argmax values themselves: rows of output
    // row oy are >= the smallest row of output row oy and < the smallest row of output row oy + 1
    // whenever bands are disjoint; we simply check that and fall back to memset + scatter.
#pragma omp parallel if (par_work(P * HW))
    {
        Buf<float> blk(int64_t(W) * 8 + V);
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++) {
            float* dxp = dx + p * HW;
            const float* g = dy + p * OHW;
            const int32_t* a = argmax + p * OHW;
            // rows covered by each output row (min/max argmax row); streamable when the row ranges
            // are increasing, disjoint and at most 8 rows tall
            bool ok = W > 0 && OW > 0;
            int prev_hi = -1;
            for (int oy = 0; ok && oy < OH; oy++) {
                int lo = H, hi = -1;
                for (int ox = 0; ox < OW; ox++) {
                    const int r = a[oy * OW + ox] / W;
                    lo = mini(lo, r);
                    hi = maxi(hi, r);
                }
                if (lo <= prev_hi || hi - lo >= 8) ok = false;
                prev_hi = hi;
            }
            if (!ok) {
                std::memset(dxp, 0, sizeof(float) * size_t(HW));
                for (int64_t i = 0; i < OHW; i++) dxp[a[i]] += g[i];
                continue;
            }
            // write the plane front to back: zero gaps, then each output row's band built in L1
            int64_t done = 0;  // elements of the plane written so far
            const R z = Simd::zero();
            for (int oy = 0; oy <= OH; oy++) {
                int lo = H, hi = H - 1;
                if (oy < OH) {
                    lo = H;
                    hi = -1;
                    for (int ox = 0; ox < OW; ox++) {
                        const int r = a[oy * OW + ox] / W;
                        lo = mini(lo, r);
                        hi = maxi(hi, r);
                    }
                }
                const int64_t s0 = int64_t(lo) * W;
                if (s0 > done) {
                    map_vec(dxp + done, s0 - done, nt, [&](int64_t, int) { return z; });
                    done = s0;
                }
                if (oy == OH) break;
                const int64_t len = int64_t(hi - lo + 1) * W;
                float* bk = blk.p;
                for (int64_t i = 0; i < len; i++) bk[i] = 0.f;
                for (int ox = 0; ox < OW; ox++) bk[a[oy * OW + ox] - s0] += g[oy * OW + ox];
                map_vec(dxp + s0, len, nt, [&](int64_t i, int k) { return ldk(bk + i, k); });
                done = s0 + len;
            }
            if (done < HW) map_vec(dxp + done, HW - done, nt, [&](int64_t, int) { return z; });
        }
    }
}

// =============================================================================================
// Fully connected
// =============================================================================================
// out[o] = sum_f x[f] * w[o * F + f] for OB rows of w, float inside 1024-chunks, double across
template <int OB>
void fc_dots(double* out, const float* x, const float* w, int64_t F) {
    double tot[OB];
    for (int o = 0; o < OB; o++) tot[o] = 0.0;
    for (int64_t b = 0; b < F; b += RCHUNK) {
        const int64_t e = min64(F, b + RCHUNK);
        R acc[OB];
#pragma GCC unroll 8
        for (int o = 0; o < OB; o++) acc[o] = Simd::zero();
        int64_t i = b;
        for (; i + V <= e; i += V) {
            const R xv = Simd::load(x + i);
#pragma GCC unroll 8
            for (int o = 0; o < OB; o++) acc[o] = Simd::fma(xv, Simd::load(w + o * F + i), acc[o]);
        }
        if (i < e) {
            const int k = int(e - i);
            const R xv = Simd::loadp(x + i, k);
#pragma GCC unroll 8
            for (int o = 0; o < OB; o++) acc[o] = Simd::fma(xv, Simd::loadp(w + o * F + i, k), acc[o]);
        }
        for (int o = 0; o < OB; o++) tot[o] += double(Simd::hsum(acc[o]));
    }
    for (int o = 0; o < OB; o++) out[o] = tot[o];
}

void fc_forward(float* y, const float* x, const float* w, const float* b, int N, int F, int O) {
    const int64_t items = N;
#pragma omp parallel if (par_work(int64_t(N) * F * O))
    {
        int64_t bb, e;
        split_range(items, omp_get_num_threads(), omp_get_thread_num(), &bb, &e);
        double d[4];
        for (int64_t n = bb; n < e; n++) {
            const float* xn = x + n * F;
            for (int o0 = 0; o0 < O; o0 += 4) {
                const int ob = mini(4, O - o0);
                const float* wo = w + int64_t(o0) * F;
                switch (ob) {
                    case 4:
                        fc_dots<4>(d, xn, wo, F);
                        break;
                    case 3:
                        fc_dots<3>(d, xn, wo, F);
                        break;
                    case 2:
                        fc_dots<2>(d, xn, wo, F);
                        break;
                    default:
                        fc_dots<1>(d, xn, wo, F);
                        break;
                }
                for (int o = 0; o < ob; o++) y[n * O + o0 + o] = float(double(b[o0 + o]) + d[o]);
            }
        }
    }
}

constexpr int FC_FB = 512;  // columns of dw per block

void fc_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int N,
                 int F, int O) {
    for (int o = 0; o < O; o++) {
        double s = 0.0;
        for (int n = 0; n < N; n++) s += dy[int64_t(n) * O + o];
        db[o] += float(s);
    }
    const int64_t nfb = cdiv(F, FC_FB);
    const bool par = par_work(int64_t(N) * F * O);
#pragma omp parallel if (par)
    {
        // dw: blocks of columns, each accumulated over the whole batch in double
        Buf<double> acc(int64_t(O) * FC_FB);
        int64_t b, e;
        split_range(nfb, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t fb = b; fb < e; fb++) {
            const int64_t f0 = fb * FC_FB;
            const int len = int(min64(FC_FB, F - f0));
            for (int64_t i = 0; i < int64_t(O) * FC_FB; i++) acc[i] = 0.0;
            for (int n = 0; n < N; n++) {
                const float* xn = x + int64_t(n) * F + f0;
                for (int o = 0; o < O; o++) {
                    const double g = dy[int64_t(n) * O + o];
                    double* a = acc.p + int64_t(o) * FC_FB;
                    for (int f = 0; f < len; f++) a[f] += g * double(xn[f]);
                }
            }
            for (int o = 0; o < O; o++) {
                float* dwo = dw + int64_t(o) * F + f0;
                const double* a = acc.p + int64_t(o) * FC_FB;
                for (int f = 0; f < len; f++) dwo[f] += float(a[f]);
            }
        }
        if (dx) {
            int64_t nb, ne;
            split_range(N, omp_get_num_threads(), omp_get_thread_num(), &nb, &ne);
            for (int64_t n = nb; n < ne; n++) {
                float* dxn = dx + n * F;
                const float* g = dy + n * O;
                const float g0 = O > 0 ? g[0] : 0.f;
                for (int f = 0; f < F; f++) dxn[f] = O > 0 ? g0 * w[f] : 0.f;
                for (int o = 1; o < O; o++) {
                    const float go = g[o];
                    const float* wo = w + int64_t(o) * F;
                    for (int f = 0; f < F; f++) dxn[f] += go * wo[f];
                }
            }
        }
    }
}

// =============================================================================================
// Convolution: direct, im2col-free, vectorised over output columns.
//
// A band of output rows of one image is computed from a "band buffer": the input rows it needs,
// zero padded on all sides (so the micro-kernels never test bounds) and, for stride s > 1, split
// into s column phases (phase ph holds input columns ph, ph + s, ... of the padded row) so that
// output column ox with kernel tap kx always reads buffer column ox + kx / s of phase kx % s:
// unit stride for every stride. Layout: buf[((ci * BR + row) * s + ph) * WB + j].
// The forward micro-kernel keeps a COB x NV tile of output vectors (COB output channels, NV
// vectors of V columns) in registers and walks the Cin*KH*KW taps: per tap, NV loads of x and COB
// broadcasts of w feed COB*NV FMAs. dx (stride 1) is the same engine on dy with flipped weights
// and padding K-1-pad. Small blocks (COB <= 3 with 32 registers: dx of a conv with 3 input
// channels) use a two-row tile instead (fwd_micro2: each loaded row vector feeds both output
// rows), walked column tile by column tile so the tile's input rows stay in L1. dw keeps a COB x TK tile (COB
// output channels, TK taps of one kernel row) of vector dot products over a band of rows and flushes it to
// per-thread double partials.
// =============================================================================================
struct ConvGeo {
    int N, Cin, H, W, Cout, KH, KW, s, py, px, OH, OW;
    int band, nbands, BR, WB;
    int64_t buf_floats;
};

inline void make_geo(ConvGeo& g, int N, int Cin, int H, int W, int Cout, int KH, int KW, int s, int py,
                     int px, int OH, int OW, int max_band, int64_t budget_floats, int nth) {
    g.N = N;
    g.Cin = Cin;
    g.H = H;
    g.W = W;
    g.Cout = Cout;
    g.KH = KH;
    g.KW = KW;
    g.s = s;
    g.py = py;
    g.px = px;
    g.OH = OH;
    g.OW = OW;
    const int64_t OWp = round_up(OW, V);
    g.WB = int(round_up(OWp + (KW - 1) / s + 1, V));
    const int64_t per_row = int64_t(Cin) * s * g.WB;
    int64_t rows = budget_floats / (per_row > 0 ? per_row : 1);
    int band = rows >= KH ? int((rows - KH) / s + 1) : 1;
    band = maxi(1, mini(band, max_band));
    band = mini(band, maxi(OH, 1));
    while (band > 1 && int64_t(N) * cdiv(OH, band) < 4 * int64_t(nth)) band = (band + 1) / 2;
    g.band = band;
    g.nbands = int(cdiv(OH, band));
    g.BR = (band - 1) * s + KH;
    g.buf_floats = int64_t(Cin) * g.BR * s * g.WB + V;
}

// Fill the band buffer for output rows [oy0, oy0 + nr) of one image (img: Cin x H x W).
inline void prep_band(float* buf, const float* img, const ConvGeo& g, int oy0, int nr) {
    const int s = g.s, rows = (nr - 1) * s + g.KH, iy0 = oy0 * s - g.py;
    const int64_t WB = g.WB;
    for (int ci = 0; ci < g.Cin; ci++)
        for (int r = 0; r < rows; r++) {
            float* d = buf + (int64_t(ci) * g.BR + r) * s * WB;
            const int iy = iy0 + r;
            if (iy < 0 || iy >= g.H) {
                std::memset(d, 0, sizeof(float) * size_t(s * WB));
                continue;
            }
            const float* src = img + (int64_t(ci) * g.H + iy) * g.W;
            if (s == 1) {
                // d[j] = src[j - px]
                const int lo = mini(maxi(g.px, 0), int(WB)), hi = mini(maxi(g.px + g.W, 0), int(WB));
                if (lo > 0) std::memset(d, 0, sizeof(float) * size_t(lo));
                if (hi > lo) std::memcpy(d + lo, src + (lo - g.px), sizeof(float) * size_t(hi - lo));
                if (hi < WB) std::memset(d + hi, 0, sizeof(float) * size_t(WB - hi));
            } else {
                for (int ph = 0; ph < s; ph++) {
                    float* dp = d + ph * WB;
                    for (int j = 0; j < WB; j++) {
                        const int ix = j * s + ph - g.px;
                        dp[j] = (ix >= 0 && ix < g.W) ? src[ix] : 0.f;
                    }
                }
            }
        }
}

// Output channels split into nblk blocks of near-equal size <= cmax; weights repacked per block
// as [ci][ky][kx][c] so the COB broadcasts of one tap are adjacent.
struct ConvBlocks {
    int nblk = 0;
    int c0[1024 + 1];
    int cob[1024];
};

inline void make_blocks(ConvBlocks& B, int Cout, int cmax) {
    int nblk = int(cdiv(Cout, cmax));
    if (nblk > 1024) nblk = 1024;  // then blocks exceed cmax; kernels still correct (spills)
    B.nblk = nblk;
    const int base = Cout / nblk, rem = Cout % nblk;
    B.c0[0] = 0;
    for (int b = 0; b < nblk; b++) {
        B.cob[b] = base + (b < rem ? 1 : 0);
        B.c0[b + 1] = B.c0[b] + B.cob[b];
    }
}

// get(co, ci, ky, kx) -> weight; wp sized Cout * Cin * KH * KW
template <class Get>
void pack_weights(float* wp, const ConvBlocks& B, int Cin, int KH, int KW, Get get) {
    const int64_t K = int64_t(Cin) * KH * KW;
    for (int b = 0; b < B.nblk; b++) {
        const int c0 = B.c0[b], cb = B.cob[b];
        float* dst = wp + c0 * K;
        for (int ci = 0; ci < Cin; ci++)
            for (int ky = 0; ky < KH; ky++)
                for (int kx = 0; kx < KW; kx++)
                    for (int c = 0; c < cb; c++)
                        dst[((int64_t(ci) * KH + ky) * KW + kx) * cb + c] = get(c0 + c, ci, ky, kx);
    }
}

constexpr bool tile_fits(int cob, int nv) { return cob * nv + cob + 1 <= Simd::NREG; }

// Micro-kernels are templates over their tile (A, B); a run-time (a, b) in [1, NA] x [1, NB] picks
// one from a table built at compile time. Make<A, B>::get() is the kernel, or null where the tile
// does not fit the registers (then it is never instantiated).
template <class Fn, template <int, int> class Make, int NA, int NB, size_t... I>
Fn pick_tile(int a, int b, std::index_sequence<I...>) {
    static const Fn table[] = {Make<int(I) / NB + 1, int(I) % NB + 1>::get()...};
    return a >= 1 && a <= NA && b >= 1 && b <= NB ? table[(a - 1) * NB + (b - 1)] : nullptr;
}
template <class Fn, template <int, int> class Make, int NA, int NB>
Fn pick_tile(int a, int b) {
    return pick_tile<Fn, Make, NA, NB>(a, b, std::make_index_sequence<size_t(NA * NB)>{});
}
constexpr int NVMAX = 8;
constexpr int CMAX = 12;  // largest instantiated block of output channels
#ifndef NDLM_CONV_CMAX_FWD
#define NDLM_CONV_CMAX_FWD (Simd::NREG >= 32 ? 5 : 5)
#endif
#ifndef NDLM_CONV_CMAX_DW
#define NDLM_CONV_CMAX_DW (Simd::NREG >= 32 ? 5 : 4)
#endif

inline int nv_for(int cob) {
    int nv = NVMAX;
    while (nv > 1 && !tile_fits(cob, nv)) nv--;
    return nv;
}

// ---- forward micro-kernel --------------------------------------------------------------------
struct FwdArgs {
    const float* buf;    // band buffer, already offset by ox0
    const float* wp;     // packed weights of the block
    const float* bias;   // bias of the block or null
    const int* koff;     // per kx: (kx % s) * WB + kx / s
    int64_t ci_stride;   // BR * s * WB
    int64_t row_stride;  // s * WB
    int Cin, KH, KW;
    int s, OW;  // stride; output row length (two-row kernels)
};

using FwdFn = void (*)(float* out, int64_t ostride, const FwdArgs& a, int rbase, int nlast);

template <int COB, int NV>
void fwd_micro(float* out, int64_t ostride, const FwdArgs& a, int rbase, int nlast) {
    R acc[COB][NV];
#pragma GCC unroll 16
    for (int c = 0; c < COB; c++) {
        const R bv = a.bias ? Simd::set1(a.bias[c]) : Simd::zero();
#pragma GCC unroll 16
        for (int j = 0; j < NV; j++) acc[c][j] = bv;
    }
    const float* wk = a.wp;
    for (int ci = 0; ci < a.Cin; ci++) {
        const float* rp = a.buf + ci * a.ci_stride + int64_t(rbase) * a.row_stride;
        for (int ky = 0; ky < a.KH; ky++, rp += a.row_stride) {
            for (int kx = 0; kx < a.KW; kx++, wk += COB) {
                const float* xp = rp + a.koff[kx];
                R wv[COB];
#pragma GCC unroll 16
                for (int c = 0; c < COB; c++) wv[c] = Simd::set1(wk[c]);
#pragma GCC unroll 16
                for (int j = 0; j < NV; j++) {
                    const R xv = Simd::load(xp + j * V);
#pragma GCC unroll 16
                    for (int c = 0; c < COB; c++) acc[c][j] = Simd::fma(xv, wv[c], acc[c][j]);
                }
            }
        }
    }
#pragma GCC unroll 16
    for (int c = 0; c < COB; c++) {
        float* op = out + c * ostride;
#pragma GCC unroll 16
        for (int j = 0; j < NV - 1; j++) Simd::store(op + j * V, acc[c][j]);
        if (nlast == V)
            Simd::store(op + (NV - 1) * V, acc[c][NV - 1]);
        else
            Simd::storep(op + (NV - 1) * V, acc[c][NV - 1], nlast);
    }
}

template <int COB, int NV>
struct FwdTile {
    static FwdFn get() {
        if constexpr (NV == 1 || tile_fits(COB, NV))
            return &fwd_micro<COB, NV>;
        else
            return nullptr;
    }
};
inline FwdFn fwd_pick(int cob, int nv) { return pick_tile<FwdFn, FwdTile, CMAX, NVMAX>(cob, nv); }

// Generic scalar tile for blocks larger than CMAX (only when Cout > 1024 * CMAX).
void fwd_scalar_block(float* out, int64_t ostride, const FwdArgs& a, int rbase, int cob, int ncols) {
    for (int c = 0; c < cob; c++)
        for (int ox = 0; ox < ncols; ox++) {
            float acc = a.bias ? a.bias[c] : 0.f;
            const float* wk = a.wp;
            for (int ci = 0; ci < a.Cin; ci++)
                for (int ky = 0; ky < a.KH; ky++) {
                    const float* rp = a.buf + ci * a.ci_stride + int64_t(rbase + ky) * a.row_stride;
                    for (int kx = 0; kx < a.KW; kx++, wk += cob) acc += rp[a.koff[kx] + ox] * wk[c];
                }
            out[c * ostride + ox] = acc;
        }
}

// Two output rows (r, r + 1) at once: every loaded input row vector feeds both rows (taps ky and
// ky - s), so there are (KH + s) / (2 KH) as many vector loads per FMA as in fwd_micro. Worth it
// when the block of output channels is small (dx of a conv with few input channels).
constexpr bool tile2_fits(int cob, int nv) { return 2 * cob * nv + nv + 2 <= Simd::NREG; }

template <int COB, int NV, int MODE>  // MODE 1: row 0 only, 2: row 1 only, 3: both
inline void fwd2_row(R (&acc0)[COB][NV], R (&acc1)[COB][NV], const float* rp, const float* w0,
                     const float* w1, const int* koff, int KW) {
    for (int kx = 0; kx < KW; kx++, w0 += COB, w1 += COB) {
        const float* xp = rp + koff[kx];
        R xv[NV];
#pragma GCC unroll 16
        for (int j = 0; j < NV; j++) xv[j] = Simd::load(xp + j * V);
#pragma GCC unroll 16
        for (int c = 0; c < COB; c++) {
            if (MODE & 1) {
                const R wv = Simd::set1(w0[c]);
#pragma GCC unroll 16
                for (int j = 0; j < NV; j++) acc0[c][j] = Simd::fma(xv[j], wv, acc0[c][j]);
            }
            if (MODE & 2) {
                const R wv = Simd::set1(w1[c]);
#pragma GCC unroll 16
                for (int j = 0; j < NV; j++) acc1[c][j] = Simd::fma(xv[j], wv, acc1[c][j]);
            }
        }
    }
}

template <int COB, int NV>
void fwd_micro2(float* out, int64_t ostride, const FwdArgs& a, int rbase, int nlast) {
    R acc0[COB][NV], acc1[COB][NV];
#pragma GCC unroll 16
    for (int c = 0; c < COB; c++) {
        const R bv = a.bias ? Simd::set1(a.bias[c]) : Simd::zero();
#pragma GCC unroll 16
        for (int j = 0; j < NV; j++) acc0[c][j] = acc1[c][j] = bv;
    }
    const int64_t tap_row = int64_t(a.KW) * COB;  // packed weights of one (ci, ky)
    const int st = a.s;
    for (int ci = 0; ci < a.Cin; ci++) {
        const float* rp = a.buf + ci * a.ci_stride + int64_t(rbase) * a.row_stride;
        const float* wci = a.wp + int64_t(ci) * a.KH * tap_row;
        const int jn = a.KH + st;
        for (int j = 0; j < jn; j++, rp += a.row_stride) {
            const bool u0 = j < a.KH, u1 = j >= st;
            const float* w0 = wci + (u0 ? j : 0) * tap_row;
            const float* w1 = wci + (u1 ? j - st : 0) * tap_row;
            if (u0 && u1)
                fwd2_row<COB, NV, 3>(acc0, acc1, rp, w0, w1, a.koff, a.KW);
            else if (u0)
                fwd2_row<COB, NV, 1>(acc0, acc1, rp, w0, w1, a.koff, a.KW);
            else if (u1)  // (neither: a row between the two windows when s > KH)
                fwd2_row<COB, NV, 2>(acc0, acc1, rp, w0, w1, a.koff, a.KW);
        }
    }
#pragma GCC unroll 16
    for (int c = 0; c < COB; c++) {
        float* op = out + c * ostride;
        float* oq = op + a.OW;
#pragma GCC unroll 16
        for (int j = 0; j < NV - 1; j++) {
            Simd::store(op + j * V, acc0[c][j]);
            Simd::store(oq + j * V, acc1[c][j]);
        }
        if (nlast == V) {
            Simd::store(op + (NV - 1) * V, acc0[c][NV - 1]);
            Simd::store(oq + (NV - 1) * V, acc1[c][NV - 1]);
        } else {
            Simd::storep(op + (NV - 1) * V, acc0[c][NV - 1], nlast);
            Simd::storep(oq + (NV - 1) * V, acc1[c][NV - 1], nlast);
        }
    }
}

template <int COB, int NV>
struct Fwd2Tile {
    static FwdFn get() {
        if constexpr (tile2_fits(COB, NV))
            return &fwd_micro2<COB, NV>;
        else
            return nullptr;
    }
};
inline FwdFn fwd2_pick(int cob, int nv) { return pick_tile<FwdFn, Fwd2Tile, 3, 5>(cob, nv); }

// Per block of output channels: the tile kernels of one row of output (full tiles of `step`
// columns, then the remainder tile whose last vector has nlast columns).
struct RowPlan {
    FwdFn full, rem;
    int step, nlast;
};
// pick(cob, nv) -> kernel or null; nvmax: widest tile that fits
template <class Pick>
inline void plan_row(RowPlan& p, int cob, int nvmax, int OW, Pick pick) {
    // widest tile that fits, then evened out over the row: 19 vectors -> 7,7,5 not 8,8,3
    const int nvec = int(cdiv(OW, V));
    const int ntile = int(cdiv(nvec, nvmax));
    const int nv = int(cdiv(nvec, ntile));
    p.step = nv * V;
    p.full = pick(cob, nv);
    const int rem = OW % (nv * V);
    if (rem) {
        const int nvr = int(cdiv(rem, V));
        p.rem = pick(cob, nvr);
        p.nlast = rem - (nvr - 1) * V;
    } else {
        p.rem = nullptr;
        p.nlast = V;
    }
}

#ifndef NDLM_CONV_TWO_ROW_CMAX
#define NDLM_CONV_TWO_ROW_CMAX (Simd::NREG >= 32 ? 3 : 0)
#endif

// out (N, Cout, OH, OW) = conv(in (N, Cin, H, W)) with packed weights (see pack_weights)
void conv_engine(float* out, const float* in, const ConvBlocks& B, const float* wp, const float* bias,
                 const ConvGeo& g) {
    if (g.N <= 0 || g.Cout <= 0 || g.OH <= 0 || g.OW <= 0) return;
    const int64_t in_img = int64_t(g.Cin) * g.H * g.W, ostride = int64_t(g.OH) * g.OW,
                  out_img = int64_t(g.Cout) * ostride, K = int64_t(g.Cin) * g.KH * g.KW;
    Buf<int> koff(g.KW);
    for (int kx = 0; kx < g.KW; kx++) koff[kx] = (kx % g.s) * g.WB + kx / g.s;
    // per block: one-row plan and, for small blocks, the two-row plan
    Buf<RowPlan> p1(B.nblk), p2(B.nblk);
    for (int b = 0; b < B.nblk; b++) {
        const int cb = B.cob[b];
        p1[b] = RowPlan{nullptr, nullptr, 0, 0};
        p2[b] = RowPlan{nullptr, nullptr, 0, 0};
        if (cb > CMAX) {
            p1[b].step = g.OW;
            continue;
        }
        plan_row(p1[b], cb, nv_for(cb), g.OW, fwd_pick);
        if (cb <= NDLM_CONV_TWO_ROW_CMAX && g.OH > 1) {
            int nv2 = 5;
            while (nv2 > 1 && !tile2_fits(cb, nv2)) nv2--;
            if (tile2_fits(cb, nv2)) plan_row(p2[b], cb, nv2, g.OW, fwd2_pick);
        }
    }
    const int64_t items = int64_t(g.N) * g.nbands;
#pragma omp parallel if (par_work(items * g.band * g.OW * int64_t(g.Cout) * K / 8))
    {
        Buf<float> buf(g.buf_floats);
        int64_t ib, ie;
        split_range(items, omp_get_num_threads(), omp_get_thread_num(), &ib, &ie);
        FwdArgs a;
        a.koff = koff.p;
        a.ci_stride = int64_t(g.BR) * g.s * g.WB;
        a.row_stride = int64_t(g.s) * g.WB;
        a.Cin = g.Cin;
        a.KH = g.KH;
        a.KW = g.KW;
        a.s = g.s;
        a.OW = g.OW;
        for (int64_t it = ib; it < ie; it++) {
            const int64_t n = it / g.nbands;
            const int oy0 = int(it % g.nbands) * g.band, nr = mini(g.band, g.OH - oy0);
            prep_band(buf.p, in + n * in_img, g, oy0, nr);
            // two-row blocks: column tiles outer, row pairs inner (a tile's input rows stay in L1)
            for (int b = 0; b < B.nblk; b++) {
                const RowPlan& q = p2[b];
                if (!q.full) continue;
                const int c0 = B.c0[b];
                float* ob0 = out + n * out_img + c0 * ostride + int64_t(oy0) * g.OW;
                a.wp = wp + c0 * K;
                a.bias = bias ? bias + c0 : nullptr;
                for (int ox0 = 0; ox0 < g.OW; ox0 += q.step) {
                    a.buf = buf.p + ox0;
                    const bool full = ox0 + q.step <= g.OW;
                    const FwdFn f2 = full ? q.full : q.rem;
                    const int nl = full ? V : q.nlast;
                    int r = 0;
                    for (; r + 2 <= nr; r += 2) f2(ob0 + int64_t(r) * g.OW + ox0, ostride, a, r * g.s, nl);
                    if (r < nr) {  // odd row: the one-row kernel of the same width
                        const int nv = full ? q.step / V : int(cdiv(g.OW - ox0, V));
                        fwd_pick(B.cob[b], nv)(ob0 + int64_t(r) * g.OW + ox0, ostride, a, r * g.s, nl);
                    }
                }
            }
            for (int r = 0; r < nr; r++) {
                const int oy = oy0 + r;
                for (int b = 0; b < B.nblk; b++) {
                    if (p2[b].full) continue;
                    const int c0 = B.c0[b];
                    float* ob = out + n * out_img + c0 * ostride + int64_t(oy) * g.OW;
                    a.wp = wp + c0 * K;
                    a.bias = bias ? bias + c0 : nullptr;
                    const RowPlan& q = p1[b];
                    if (!q.full) {
                        a.buf = buf.p;
                        fwd_scalar_block(ob, ostride, a, r * g.s, B.cob[b], g.OW);
                        continue;
                    }
                    int ox0 = 0;
                    for (; ox0 + q.step <= g.OW; ox0 += q.step) {
                        a.buf = buf.p + ox0;
                        q.full(ob + ox0, ostride, a, r * g.s, V);
                    }
                    if (ox0 < g.OW) {
                        a.buf = buf.p + ox0;
                        q.rem(ob + ox0, ostride, a, r * g.s, q.nlast);
                    }
                }
            }
        }
    }
}

void conv_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s) {
    if (s.N <= 0 || s.Cout <= 0 || s.OH <= 0 || s.OW <= 0) return;
    ConvGeo g;
    make_geo(g, s.N, s.Cin, s.H, s.W, s.Cout, s.KH, s.KW, s.stride, s.pad, s.pad, s.OH, s.OW, 16, 48 * 1024,
             omp_get_max_threads());
    ConvBlocks B;
    make_blocks(B, s.Cout, NDLM_CONV_CMAX_FWD);
    Buf<float> wp(int64_t(s.Cout) * s.Cin * s.KH * s.KW);
    pack_weights(wp.p, B, s.Cin, s.KH, s.KW, [&](int co, int ci, int ky, int kx) {
        return w[((int64_t(co) * s.Cin + ci) * s.KH + ky) * s.KW + kx];
    });
    conv_engine(y, x, B, wp.p, b, g);
}

// ---- dw micro-kernel -------------------------------------------------------------------------
struct DwArgs {
    const float* dy;     // dy of the image at channel c0, row oy0
    int64_t dy_cstride;  // OH * OW
    const float* xb;     // band buffer at (ci, row ky, phase 0)
    int64_t xrow_step;   // buffer offset between consecutive output rows: s * s * WB
    const int* koff;     // koff + kx0
    double* dwp;         // thread partial at (c0, ci, ky, kx0)
    int64_t dw_cstride;  // Cin * KH * KW
    int OW, nr;
};
using DwFn = void (*)(const DwArgs& a);

template <int COB, int TK>
void dw_micro(const DwArgs& a) {
    R acc[COB][TK];
#pragma GCC unroll 16
    for (int c = 0; c < COB; c++)
#pragma GCC unroll 16
        for (int t = 0; t < TK; t++) acc[c][t] = Simd::zero();
    int ko[TK];
    for (int t = 0; t < TK; t++) ko[t] = a.koff[t];
    const int nfull = a.OW / V, tail = a.OW - nfull * V;
    for (int r = 0; r < a.nr; r++) {
        const float* dr = a.dy + int64_t(r) * a.OW;
        const float* xr = a.xb + r * a.xrow_step;
        int ox = 0;
        for (int v = 0; v < nfull; v++, ox += V) {
            R d[COB];
#pragma GCC unroll 16
            for (int c = 0; c < COB; c++) d[c] = Simd::load(dr + c * a.dy_cstride + ox);
#pragma GCC unroll 16
            for (int t = 0; t < TK; t++) {
                const R xv = Simd::load(xr + ko[t] + ox);
#pragma GCC unroll 16
                for (int c = 0; c < COB; c++) acc[c][t] = Simd::fma(d[c], xv, acc[c][t]);
            }
        }
        if (tail) {
            R d[COB];
#pragma GCC unroll 16
            for (int c = 0; c < COB; c++) d[c] = Simd::loadp(dr + c * a.dy_cstride + ox, tail);
#pragma GCC unroll 16
            for (int t = 0; t < TK; t++) {
                const R xv = Simd::load(xr + ko[t] + ox);
#pragma GCC unroll 16
                for (int c = 0; c < COB; c++) acc[c][t] = Simd::fma(d[c], xv, acc[c][t]);
            }
        }
    }
    for (int c = 0; c < COB; c++)
        for (int t = 0; t < TK; t++) a.dwp[c * a.dw_cstride + t] += double(Simd::hsum(acc[c][t]));
}

template <int COB, int TK>
struct DwTile {
    static DwFn get() {
        if constexpr (TK == 1 || tile_fits(COB, TK))
            return &dw_micro<COB, TK>;
        else
            return nullptr;
    }
};
inline DwFn dw_pick(int cob, int tk) { return pick_tile<DwFn, DwTile, CMAX, NVMAX>(cob, tk); }

constexpr int DW_BAND = 16;  // output rows summed in float before the flush to double

void conv_dw(float* dw, float* db, const float* dy, const float* x, const ConvShape& s) {
    const int64_t KW_total = int64_t(s.Cout) * s.Cin * s.KH * s.KW;
    const int64_t stride_part = round_up(KW_total + s.Cout, 8);
    const int maxth = omp_get_max_threads();
    Buf<double> part(stride_part * maxth, true);
    if (s.N > 0 && s.OH > 0 && s.OW > 0) {
        ConvGeo g;
        make_geo(g, s.N, s.Cin, s.H, s.W, s.Cout, s.KH, s.KW, s.stride, s.pad, s.pad, s.OH, s.OW, DW_BAND,
                 48 * 1024, maxth);
        ConvBlocks B;
        make_blocks(B, s.Cout, mini(NDLM_CONV_CMAX_DW, CMAX));
        Buf<int> koff(s.KW + NVMAX);
        for (int kx = 0; kx < s.KW; kx++) koff[kx] = (kx % s.stride) * g.WB + kx / s.stride;
        // per block: tap block size and kernels (full tap block and last tap block)
        Buf<int> tkb(B.nblk), ntb(B.nblk);
        Buf<DwFn> fA(B.nblk), fB(B.nblk);
        for (int b = 0; b < B.nblk; b++) {
            int t = mini(nv_for(B.cob[b]), s.KW);
            const int nt = int(cdiv(s.KW, t));
            t = int(cdiv(s.KW, nt));
            tkb[b] = t;
            ntb[b] = nt;
            fA[b] = dw_pick(B.cob[b], t);
            const int lastt = s.KW - (nt - 1) * t;
            fB[b] = dw_pick(B.cob[b], lastt);
        }
        const int64_t in_img = int64_t(s.Cin) * s.H * s.W, ostride = int64_t(s.OH) * s.OW,
                      out_img = int64_t(s.Cout) * ostride;
        const int64_t items = int64_t(s.N) * g.nbands;
        const int64_t dw_cstride = int64_t(s.Cin) * s.KH * s.KW;
#pragma omp parallel if (par_work(int64_t(s.N) * ostride * s.Cout * dw_cstride / 8))
        {
            const int tid = omp_get_thread_num();
            double* my = part.p + tid * stride_part;
            Buf<float> buf(g.buf_floats);
            int64_t ib, ie;
            split_range(items, omp_get_num_threads(), tid, &ib, &ie);
            DwArgs a;
            a.dy_cstride = ostride;
            a.xrow_step = int64_t(s.stride) * s.stride * g.WB;
            a.dw_cstride = dw_cstride;
            a.OW = s.OW;
            for (int64_t it = ib; it < ie; it++) {
                const int64_t n = it / g.nbands;
                const int oy0 = int(it % g.nbands) * g.band, nr = mini(g.band, s.OH - oy0);
                prep_band(buf.p, x + n * in_img, g, oy0, nr);
                const float* dyb = dy + n * out_img + int64_t(oy0) * s.OW;
                if (db)
                    for (int co = 0; co < s.Cout; co++)
                        my[KW_total + co] += sum_f(dyb + co * ostride, int64_t(nr) * s.OW);
                a.nr = nr;
                for (int ci = 0; ci < s.Cin; ci++)
                    for (int ky = 0; ky < s.KH; ky++) {
                        a.xb = buf.p + (int64_t(ci) * g.BR + ky) * s.stride * g.WB;
                        for (int b = 0; b < B.nblk; b++) {
                            const int c0 = B.c0[b];
                            a.dy = dyb + c0 * ostride;
                            for (int tb = 0; tb < ntb[b]; tb++) {
                                const int kx0 = tb * tkb[b];
                                a.koff = koff.p + kx0;
                                a.dwp = my + ((int64_t(c0) * s.Cin + ci) * s.KH + ky) * s.KW + kx0;
                                (tb + 1 < ntb[b] ? fA[b] : fB[b])(a);
                            }
                        }
                    }
            }
        }
    }
    for (int64_t i = 0; i < KW_total; i++) {
        double t = 0.0;
        for (int th = 0; th < maxth; th++) t += part[th * stride_part + i];
        dw[i] += float(t);
    }
    if (db)
        for (int co = 0; co < s.Cout; co++) {
            double t = 0.0;
            for (int th = 0; th < maxth; th++) t += part[th * stride_part + KW_total + co];
            db[co] += float(t);
        }
}

// dx for stride > 1: per (image, input channel) plane, scatter of dy * w (correct, not tuned)
void conv_dx_strided(float* dx, const float* dy, const float* w, const ConvShape& s) {
    const int64_t P = int64_t(s.N) * s.Cin, HW = int64_t(s.H) * s.W, OHW = int64_t(s.OH) * s.OW;
#pragma omp parallel if (par_work(P * OHW * s.Cout * s.KH * s.KW / 8))
    {
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++) {
            const int64_t n = p / s.Cin;
            const int ci = int(p % s.Cin);
            float* dxp = dx + p * HW;
            std::memset(dxp, 0, sizeof(float) * size_t(HW));
            for (int co = 0; co < s.Cout; co++) {
                const float* dyp = dy + (n * s.Cout + co) * OHW;
                for (int ky = 0; ky < s.KH; ky++)
                    for (int kx = 0; kx < s.KW; kx++) {
                        const float wv = w[((int64_t(co) * s.Cin + ci) * s.KH + ky) * s.KW + kx];
                        // ox range with 0 <= ox * stride + kx - pad < W
                        int lo = 0;
                        while (lo < s.OW && lo * s.stride + kx - s.pad < 0) lo++;
                        int hi = s.OW;
                        while (hi > lo && (hi - 1) * s.stride + kx - s.pad >= s.W) hi--;
                        for (int oy = 0; oy < s.OH; oy++) {
                            const int iy = oy * s.stride + ky - s.pad;
                            if (iy < 0 || iy >= s.H) continue;
                            float* dr = dxp + int64_t(iy) * s.W + kx - s.pad;
                            const float* g = dyp + int64_t(oy) * s.OW;
                            for (int ox = lo; ox < hi; ox++) dr[ox * s.stride] += g[ox] * wv;
                        }
                    }
            }
        }
    }
}

void conv_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                   const ConvShape& s) {
    if (dx) {
        if (s.stride == 1) {
            // dx = full correlation of dy with the flipped kernels: a stride-1 convolution of dy
            // (Cout channels, OH x OW) with padding K - 1 - pad, giving H x W
            if (s.N > 0 && s.Cin > 0 && s.H > 0 && s.W > 0) {
                // larger band than the forward: 10-channel dy rows, fewer re-copied halo rows;
                // the two-row tiles walk it by column tiles, so only a tile's rows need L1
                ConvGeo g;
                make_geo(g, s.N, s.Cout, s.OH, s.OW, s.Cin, s.KH, s.KW, 1, s.KH - 1 - s.pad, s.KW - 1 - s.pad,
                         s.H, s.W, 16, 96 * 1024, omp_get_max_threads());
                ConvBlocks B;
                make_blocks(B, s.Cin, NDLM_CONV_CMAX_FWD);
                Buf<float> wp(int64_t(s.Cout) * s.Cin * s.KH * s.KW);
                pack_weights(wp.p, B, s.Cout, s.KH, s.KW, [&](int ci, int co, int ky, int kx) {
                    return w[((int64_t(co) * s.Cin + ci) * s.KH + (s.KH - 1 - ky)) * s.KW + (s.KW - 1 - kx)];
                });
                conv_engine(dx, dy, B, wp.p, nullptr, g);
            }
        } else {
            conv_dx_strided(dx, dy, w, s);
        }
    }
    conv_dw(dw, db, dy, x, s);
}

// =============================================================================================
// Fused pointwise segments (batch norm / ReLU runs, optionally + non-overlapping max pool)
// =============================================================================================
#include "fused_impl.h"

}  // namespace

const fast::detail::KernelTable kTable = {
    Simd::name,
    &batchnorm_forward_train,
    &batchnorm_forward_infer,
    &batchnorm_backward,
    &lrn_forward,
    &lrn_backward,
    &conv_forward,
    &conv_backward,
    &relu_forward,
    &relu_backward,
    &maxpool_forward,
    &maxpool_backward,
    &fc_forward,
    &fc_backward,
    &seg_bn_stats,
    &seg_forward,
    &seg_bwd_sums,
    &seg_backward,
};

}  // namespace NDLM_ISA_NS
}  // namespace ndlm
