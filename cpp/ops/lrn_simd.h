// Tuned cross-channel LRN (reference: lrn_ref.cpp).
// Included by kernels_impl.h inside its per-ISA anonymous namespace (see there): no includes, no
// out-of-line std:: templates.

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

// Squares above this (|x| > 1e15) make the float window sums, or k + a * sum and its powers,
// leave float range (overflow, or an inverse in the denormals): such a chunk is computed in
// double, the reference kernel's way (lrn_ref.cpp), so large finite inputs give finite outputs.
constexpr float LRN_BIG_SQ = 1e30f;

inline double lrn_scale_d(const float* xn, int64_t ld, int c, int C, int h, int i, float alpha, int size, float k) {
    double s = 0.0;
    for (int j = maxi(0, c - h); j <= mini(C - 1, c + h); j++) s += double(xn[int64_t(j) * ld + i]) * xn[int64_t(j) * ld + i];
    return k + alpha / size * s;
}

// One chunk (len pixels of every channel, image planes of ld = HW floats) in double
inline void lrn_forward_chunk_d(float* yn, const float* xn, int64_t ld, int C, int len, int size, float alpha,
                                float beta, float k) {
    const int h = size / 2;
    for (int c = 0; c < C; c++)
        for (int i = 0; i < len; i++)
            yn[int64_t(c) * ld + i] =
                float(xn[int64_t(c) * ld + i] * std::pow(lrn_scale_d(xn, ld, c, C, h, i, alpha, size, k), -beta));
}

inline void lrn_backward_chunk_d(float* dxn, const float* dyn, const float* xn, int64_t ld, int C, int len, int size,
                                 float alpha, float beta, float k) {
    const int h = size / 2;
    for (int c = 0; c < C; c++)
        for (int i = 0; i < len; i++) {
            double acc = 0.0;
            for (int j = maxi(0, c - h); j <= mini(C - 1, c + h); j++) {
                const double sj = lrn_scale_d(xn, ld, j, C, h, i, alpha, size, k);
                acc += double(dyn[int64_t(j) * ld + i]) * xn[int64_t(j) * ld + i] * std::pow(sj, -beta - 1.0);
            }
            const double si = lrn_scale_d(xn, ld, c, C, h, i, alpha, size, k);
            const int64_t p = int64_t(c) * ld + i;
            dxn[p] = float(dyn[p] * std::pow(si, -beta) - 2.0 * alpha * beta / size * xn[p] * acc);
        }
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
            float big = 0.f;
            for (int c = 0; c < C; c++) {
                const float* xc = xn + int64_t(c) * HW;
                float* s = sq.p + int64_t(c) * LRN_CHUNK;
                for (int i = 0; i < len; i++) {
                    s[i] = xc[i] * xc[i];
                    big = s[i] > big ? s[i] : big;
                }
            }
            if (!(big <= LRN_BIG_SQ)) {
                lrn_forward_chunk_d(yn, xn, HW, C, len, size, alpha, beta, k);
                continue;
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
            float big = 0.f;
            for (int c = 0; c < C; c++) {
                const float* xc = x + o + int64_t(c) * HW;
                float* s = sq.p + int64_t(c) * LRN_CHUNK;
                for (int i = 0; i < len; i++) {
                    s[i] = xc[i] * xc[i];
                    big = s[i] > big ? s[i] : big;
                }
            }
            if (!(big <= LRN_BIG_SQ)) {
                lrn_backward_chunk_d(dx + o, dy + o, x + o, HW, C, len, size, alpha, beta, k);
                continue;
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
