// Tuned max pooling (reference: maxpool_ref.cpp).
// Included by kernels_impl.h inside its per-ISA anonymous namespace (see there): no includes, no
// out-of-line std:: templates.

// =============================================================================================
// Max pooling: per output row, a vertical pass (max over the K rows, vectorised over columns,
// remembering the first row of the maximum) then a horizontal pass over the K columns of each
// window. Ties resolve to the first element in row-major window order, exactly as the reference.
// =============================================================================================
// Horizontal pass of the max-pool scan (shared by pool_plane and the fused segments, which must
// give the same bits): output columns [ox0, ox0 + nv) of one output row whose windows start at input
// row r0, from m / kk, the vertical maxima of the row's input columns and their rows (ky as float).
// Vectorised over output columns with stride-S gathers. The first maximum in row-major window
// order wins: larger value, then smaller row, then (scanning kx upwards, strict) smaller column.
// A column of -inf / NaN keeps row 0, so an all -inf window points at its start, like the
// reference. Writes yrow / arow at ox0; on_take(kx, take) sees each tap's lanes that took it.
// tk, tx: V floats of scratch.
template <class OnTake>
inline void pool_hscan(float* yrow, int32_t* arow, const float* m, const float* kk, int ox0, int nv, int K,
                       int S, int r0, int W, float* tk, float* tx, OnTake on_take) {
    const float* mb = m + int64_t(ox0) * S;
    const float* kb = kk + int64_t(ox0) * S;
    R best = Simd::gather(mb, S), bk = Simd::gather(kb, S), bx = Simd::zero();
    for (int kx = 1; kx < K; kx++) {
        const R v = Simd::gather(mb + kx, S), k2 = Simd::gather(kb + kx, S);
        const auto take = Simd::mor(Simd::gt(v, best), Simd::mand(Simd::eq(v, best), Simd::lt(k2, bk)));
        best = Simd::blend(take, v, best);
        bk = Simd::blend(take, k2, bk);
        bx = Simd::blend(take, Simd::set1(float(kx)), bx);
        on_take(kx, take);
    }
    Simd::storep(yrow + ox0, best, nv);
    Simd::store(tk, bk);
    Simd::store(tx, bx);
    int32_t* aq = arow + ox0;
    for (int j = 0; j < nv; j++) aq[j] = (r0 + int(tk[j])) * W + (ox0 + j) * S + int(tx[j]);
}

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
        for (int ox0 = 0; ox0 < OW; ox0 += V)
            pool_hscan(yp + oy * OW, ap + oy * OW, m, kk, ox0, mini(V, OW - ox0), K, S, r0, W, tk, tx,
                       [](int, const auto&) {});
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
