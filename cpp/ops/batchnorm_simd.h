// Tuned batch normalization (reference: batchnorm_ref.cpp).
// Included by kernels_impl.h inside its per-ISA anonymous namespace (see there): no includes, no
// out-of-line std:: templates.

// Chan et al.: combine per-plane means pm and centred sums of squares pq of (N, C) planes of HW
// values into per-channel mean and 1 / sqrt(var + eps), planes of a channel in batch order
// wide (if not null) gets, per channel, whether the output pass must run in double: |x - mean| may
// leave float range (M var >= FLT_MAX^2 / 4 bounds every (x - mean)^2) or gamma rstd is below the
// smallest normal float (rstd < 1e-19 on such inputs)
inline void bn_combine(float* mean, float* rstd, const double* pm, const double* pq, int N, int C, int64_t HW,
                       float eps, const float* gamma = nullptr, unsigned char* wide = nullptr) {
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
        if (wide) {
            const double fmax = 3.4028234663852886e38, sc = std::fabs(double(gamma[c]) * double(rstd[c]));
            wide[c] = (cnt > 0 && 4.0 * cnt * var >= fmax * fmax) || (sc > 0 && sc < 1.1754943508222875e-38);
        }
    }
}

// the output pass of batchnorm_forward_train in double, as batchnorm_ref.cpp
inline void bn_out_wide(float* y, const float* x, int64_t n, float mean, float rstd, float gamma, float beta) {
    for (int64_t i = 0; i < n; i++)
        y[i] = float(double(gamma) * ((double(x[i]) - mean) * double(rstd)) + double(beta));
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
    Buf<unsigned char> wide(C);
    bn_combine(mean, rstd, pm.p, pq.p, N, C, HW, eps, gamma, wide.p);
#pragma omp parallel if (par_work(P * HW))
    {
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++) {
            const int c = int(p % C);
            const float* xp = x + p * HW;
            if (wide[c]) {
                bn_out_wide(y + p * HW, xp, HW, mean[c], rstd[c], gamma[c], beta[c]);
                continue;
            }
            const R mc = Simd::set1(mean[c]), sc = Simd::set1(gamma[c] * rstd[c]), bc = Simd::set1(beta[c]);
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
    Buf<unsigned char> pw(P);  // plane p had a chunk redone in double (x - mean may overflow there)
#pragma omp parallel if (par_work(P * HW))
    {
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++)
            pw[p] = dydev_f(dy + p * HW, x + p * HW, HW, mean[p % C], &ps[p], &pd[p]);
    }
    Buf<float> ka(C), kb(C), kx(C);
    Buf<double> csdy(C), csdx(C);
    Buf<unsigned char> wide(C);  // channel c's dx pass runs in double, as batchnorm_ref.cpp
    const double M = double(N) * HW;
    for (int c = 0; c < C; c++) {
        double sdy = 0.0, sdx = 0.0;
        bool w = false;
        for (int n = 0; n < N; n++) {
            sdy += ps[int64_t(n) * C + c];
            sdx += pd[int64_t(n) * C + c];
            w = w || pw[int64_t(n) * C + c];
        }
        bn_backward_coefs(sdy, sdx, rstd[c], gamma[c], M, &dgamma[c], &dbeta[c], &ka[c], &kb[c], &kx[c]);
        // a coefficient that underflowed float (rstd^2 below 1e-38 on |x| >~ 1e19) loses its term
        const double r = rstd[c], a = double(gamma[c]) * r, k2 = a * r * (sdx * r) / M;
        const auto lost = [](double v) { return v != 0.0 && std::fabs(v) < 1.1754943508222875e-38; };
        wide[c] = w || lost(a) || lost(a * sdy / M) || lost(k2);
        csdy[c] = sdy;
        csdx[c] = sdx * r;
    }
    if (!dx) return;
    const bool nt = P * HW * int64_t(sizeof(float)) > NT_BYTES;
#pragma omp parallel if (par_work(P * HW))
    {
        int64_t b, e;
        split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        for (int64_t p = b; p < e; p++) {
            const int c = int(p % C);
            const float* dyp = dy + p * HW;
            const float* xp = x + p * HW;
            if (wide[c]) {
                const double r = rstd[c], a = double(gamma[c]) * r, my = csdy[c] / M, mx = csdx[c] / M;
                float* dxp = dx + p * HW;
                for (int64_t i = 0; i < HW; i++) {
                    const double xhat = (double(xp[i]) - mean[c]) * r;
                    dxp[i] = float(a * (double(dyp[i]) - my - xhat * mx));
                }
                continue;
            }
            const R a = Simd::set1(ka[c]), bb = Simd::set1(kb[c]), kk = Simd::set1(kx[c]),
                    m = Simd::set1(mean[c]);
            map_vec(dx + p * HW, HW, nt, [&](int64_t i, int k) {
                return Simd::fma(a, ldk(dyp + i, k), Simd::fma(kk, Simd::sub(ldk(xp + i, k), m), bb));
            });
        }
    }
}
