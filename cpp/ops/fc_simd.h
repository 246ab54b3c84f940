// Tuned fully connected layer (reference: fc_ref.cpp).
// Included by kernels_impl.h inside its per-ISA anonymous namespace (see there): no includes, no
// out-of-line std:: templates.

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
