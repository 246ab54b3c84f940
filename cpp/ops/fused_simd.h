// Fused pointwise segments (fused.h): included by kernels_impl.h inside its per-ISA anonymous
// namespace, after the per-layer kernels whose helpers (sum_f, sqdev_f, map_vec, bn_combine)
// it reuses.
//
// Work is split over the (image, channel) planes exactly as the per-layer kernels split it. The
// channel is fixed within a plane, so every op's constants are broadcast once per plane and the
// whole chain of ops runs in registers, one vector of pixels at a time: a pass reads the segment
// input x (and a gradient) once and writes at most one output.
//
// Forward values are those of the per-layer kernels bit for bit (same float operations, same
// per-plane reductions for the statistics, same max-pool scan). Backward sums are accumulated in
// float over blocks of at most one band of pooled rows (or RCHUNK pixels) and in double across
// blocks, in a fixed order: deterministic for a thread count, equal to the per-layer path's
// within float rounding.
#ifndef NDLM_ISA_NS
#error "ops/fused_simd.h is included by kernels_impl.h"
#endif

// GCC 12 warns about negative op indices on paths that instantiations with fixed chains never take
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
#endif

struct SegConst {  // one op's constants for one channel
    R m, s, b, ka, kb, kx;
    bool relu;
};

inline void seg_consts(SegConst* cc, const SegOp* ops, int nops, int c, bool bwd) {
    for (int i = 0; i < nops; i++) {
        cc[i].relu = ops[i].relu;
        if (ops[i].relu) {
            cc[i].m = cc[i].s = cc[i].b = cc[i].ka = cc[i].kb = cc[i].kx = Simd::zero();
            continue;
        }
        cc[i].m = Simd::set1(ops[i].mean[c]);
        cc[i].s = Simd::set1(ops[i].scale[c]);
        cc[i].b = Simd::set1(ops[i].shift[c]);
        if (bwd && ops[i].ka) {
            cc[i].ka = Simd::set1(ops[i].ka[c]);
            cc[i].kb = Simd::set1(ops[i].kb[c]);
            cc[i].kx = Simd::set1(ops[i].kx[c]);
        }
    }
}

// The op types of a segment: fixed at compile time for common segments (loops over ops unroll,
// constants stay in registers), else at run time. relu(i): op i is a ReLU (else a batch norm).
template <int N, unsigned M>
struct ChainF {
    static constexpr int n() { return N; }
    static constexpr bool relu(int i) { return (M >> i) & 1u; }
};
struct ChainD {
    int nn;
    unsigned m;
    int n() const { return nn; }
    bool relu(int i) const { return (m >> i) & 1u; }
};

// f(chain) for the first nops ops
template <class F>
inline void seg_dispatch(const SegOp* ops, int nops, F f) {
    unsigned m = 0;
    for (int i = 0; i < nops; i++)
        if (ops[i].relu) m |= 1u << i;
    if (nops == 3 && m == 2u) return f(ChainF<3, 2u>{});  // batch norm, ReLU, batch norm
    if (nops == 2 && m == 2u) return f(ChainF<2, 2u>{});  // batch norm, ReLU
    if (nops == 1 && m == 1u) return f(ChainF<1, 1u>{});  // ReLU
    if (nops == 1 && m == 0u) return f(ChainF<1, 0u>{});  // batch norm
    if (nops == 2 && m == 0u) return f(ChainF<2, 0u>{});  // batch norm, batch norm
    if (nops == 0) return f(ChainF<0, 0u>{});
    f(ChainD{nops, m});
}

// ops [from, to) applied to v: the per-layer kernels' formulas
template <class Ch>
inline R seg_apply(const Ch& ch, R v, const SegConst* cc, int from, int to) {
    for (int i = from; i < to; i++)
        v = ch.relu(i) ? Simd::max(v, Simd::zero()) : Simd::fma(Simd::sub(v, cc[i].m), cc[i].s, cc[i].b);
    return v;
}

// Gradient g at the output of op from - 1 back to the input of op `to`; vs[i] = input of op i
// (vs[i + 1] its output)
template <class Ch>
inline R seg_back(const Ch& ch, R g, const R* vs, const SegConst* cc, int from, int to) {
    for (int i = from - 1; i >= to; i--)
        g = ch.relu(i) ? Simd::sel_gt0(vs[i + 1], g)
                       : Simd::fma(cc[i].ka, g, Simd::fma(cc[i].kx, Simd::sub(vs[i], cc[i].m), cc[i].kb));
    return g;
}

// How many forward values the backward chain needs: a ReLU's backward reads its output, a batch
// norm's its input.
template <class Ch>
inline int seg_fwd_needed(const Ch& ch) {
    return ch.relu(ch.n() - 1) ? ch.n() : ch.n() - 1;
}

template <class Ch>
inline int seg_last_bn(const Ch& ch) {
    for (int i = ch.n() - 1; i >= 0; i--)
        if (!ch.relu(i)) return i;
    return -1;
}

// Batch statistics (mean, rstd) of v_nops = ops[nops - 1](... ops[0](x)), like batchnorm_forward_train.
void seg_bn_stats(float* mean, float* rstd, const float* x, const SegShape& s, const SegOp* ops, int nops,
                  float eps) {
    const int64_t HW = int64_t(s.H) * s.W, P = int64_t(s.N) * s.C;
    Buf<double> pm(P), pq(P);
    seg_dispatch(ops, nops, [&](auto ch) {
#pragma omp parallel if (par_work(P * HW * (nops + 1)))
        {
            Buf<float> plane(nops > 0 ? HW : 1);
            SegConst cc[kMaxSegOps] = {};
            int64_t b, e;
            split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
            for (int64_t p = b; p < e; p++) {
                const float* xp = x + p * HW;
                if (nops > 0) {
                    seg_consts(cc, ops, ch.n(), int(p % s.C), false);
                    map_vec(plane.p, HW, false,
                            [&](int64_t i, int k) { return seg_apply(ch, ldk(xp + i, k), cc, 0, ch.n()); });
                    xp = plane.p;
                }
                const double m = HW > 0 ? sum_f(xp, HW) / double(HW) : 0.0;
                const float mf = float(m);
                pq[p] = sqdev_f(xp, HW, mf) - double(HW) * (m - mf) * (m - mf);
                pm[p] = m;
            }
        }
    });
    bn_combine(mean, rstd, pm.p, pq.p, s.N, s.C, HW, eps);
}

// y = the segment applied to x. With pooling (s.K == s.S > 0): y and argmax are the pooled output
// (maxpool_forward's scan on the segment's values, computed on the fly), and vlast (if not null)
// gets, at each argmax, the input value of the last batch norm of the segment.
void seg_forward(float* y, int32_t* argmax, float* vlast, const float* x, const SegShape& s, const SegOp* ops,
                 int nops) {
    const int64_t HW = int64_t(s.H) * s.W, P = int64_t(s.N) * s.C, OHW = int64_t(s.OH) * s.OW;
    const bool pool = s.K > 0;
    if (pool && (s.OH <= 0 || s.OW <= 0)) return;
    const bool nt = !pool && P * HW * int64_t(sizeof(float)) > NT_BYTES;
    seg_dispatch(ops, nops, [&](auto ch) {
        if (ch.n() == 0) return;
        const int jl = seg_last_bn(ch);
        const bool keep = vlast && jl >= 0;
#pragma omp parallel if (par_work(P * HW * (nops + 1)))
        {
            const int K = s.K, S = s.S, W = s.W, OW = s.OW;
            const int64_t Wpad = pool ? pool_scratch_len(K, S, OW) : 1;
            Buf<float> vm(Wpad, true), vk(Wpad, true), vv(Wpad, true), tk(V), tx(V);
            SegConst cc[kMaxSegOps] = {};
            int64_t b, e;
            split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
            for (int64_t p = b; p < e; p++) {
                seg_consts(cc, ops, ch.n(), int(p % s.C), false);
                const float* xp = x + p * HW;
                if (!pool) {
                    map_vec(y + p * HW, HW, nt,
                            [&](int64_t i, int k) { return seg_apply(ch, ldk(xp + i, k), cc, 0, ch.n()); });
                    continue;
                }
                float* yp = y + p * OHW;
                int32_t* ap = argmax + p * OHW;
                float* lp = keep ? vlast + p * OHW : nullptr;
                const int Wn = (OW - 1) * S + K;
                for (int oy = 0; oy < s.OH; oy++) {
                    const int r0 = oy * S;
                    // vertical: as pool_plane (row by row), on the segment's values
                    for (int ky = 0; ky < K; ky++) {
                        const float* row = xp + int64_t(r0 + ky) * W;
                        const R fky = Simd::set1(float(ky));
                        for (int i = 0; i < Wn; i += V) {
                            const int k = mini(V, Wn - i);
                            const R xv = ldk(row + i, k);
                            R m = ky ? Simd::load(vm.p + i) : Simd::set1(-__builtin_inff());
                            R kk = ky ? Simd::load(vk.p + i) : Simd::zero();
                            if (keep) {
                                const R u = seg_apply(ch, xv, cc, 0, jl);
                                const R v = seg_apply(ch, u, cc, jl, ch.n());
                                const auto g = Simd::gt(v, m);
                                const R lv = ky ? Simd::load(vv.p + i) : Simd::zero();
                                Simd::store(vv.p + i, Simd::blend(g, u, lv));
                                m = Simd::blend(g, v, m);
                                kk = Simd::blend(g, fky, kk);
                            } else {
                                const R v = seg_apply(ch, xv, cc, 0, ch.n());
                                const auto g = Simd::gt(v, m);
                                m = Simd::blend(g, v, m);
                                kk = Simd::blend(g, fky, kk);
                            }
                            Simd::store(vm.p + i, m);  // scratch padded to whole vectors
                            Simd::store(vk.p + i, kk);
                        }
                    }
                    // horizontal: the scan of pool_plane, carrying the last batch norm's input along
                    for (int ox0 = 0; ox0 < OW; ox0 += V) {
                        const int nv = mini(V, OW - ox0);
                        const float* lb = vv.p + int64_t(ox0) * S;
                        R bl = keep ? Simd::gather(lb, S) : Simd::zero();
                        pool_hscan(yp + oy * OW, ap + oy * OW, vm.p, vk.p, ox0, nv, K, S, r0, W, tk.p, tx.p,
                                   [&](int kx, const auto& take) {
                                       if (keep) bl = Simd::blend(take, Simd::gather(lb + kx, S), bl);
                                   });
                        if (keep) Simd::storep(lp + oy * OW + ox0, bl, nv);
                    }
                }
            }
        }
    });
}

// Dense gradient of the segment output for pixels [i0, i0 + len) of a plane: with pooling (K == S),
// the band of output row oy = i0 / (S W) (len = S W) or zeros below the last band; else dy itself.
struct SegGrad {
    const float* dy;
    const int32_t* am;
    int64_t OHW;
    float* band;
    const float* zeros;
    bool pool;
    int S, W, OH, OW;
    const float* get(int64_t p, int64_t HW, int64_t i0, int len) const {
        if (!pool) return dy + p * HW + i0;
        const int oy = int(i0 / (int64_t(S) * W));
        if (oy >= OH) return zeros;
        for (int i = 0; i < len; i++) band[i] = 0.f;
        const float* g = dy + p * OHW + int64_t(oy) * OW;
        const int32_t* a = am + p * OHW + int64_t(oy) * OW;
        for (int ox = 0; ox < OW; ox++) band[a[ox] - i0] += g[ox];
        return band;
    }
};

// Calls f(i0, len, g) for the blocks of a plane: bands of S rows with pooling, else RCHUNK pixels
template <class F>
inline void seg_blocks(int64_t p, int64_t HW, const SegGrad& gr, F f) {
    const int64_t blk = gr.pool ? int64_t(gr.S) * gr.W : RCHUNK;
    for (int64_t i0 = 0; i0 < HW; i0 += blk) {
        const int len = int(min64(blk, HW - i0));
        f(i0, len, gr.get(p, HW, i0, len));
    }
}

// For the batch norm ops[j]: per channel, sum g_{j+1} and sum g_{j+1} (v_j - mean_j) (the sums of
// batchnorm_backward, before the factor rstd), dy the gradient of the segment output (pooled
// when s.K > 0, with argmax). Ops after j need their backward coefficients. With pooling and j the
// last batch norm, vlast (from seg_forward) gives v_j at the argmax positions: the sums run over
// the pooled outputs only (the gradient is zero elsewhere).
void seg_bwd_sums(double* sdy, double* sdx, const float* x, const float* dy, const int32_t* argmax,
                  const float* vlast, const SegShape& s, const SegOp* ops, int nops, int j) {
    const int64_t HW = int64_t(s.H) * s.W, P = int64_t(s.N) * s.C, OHW = int64_t(s.OH) * s.OW;
    const bool pool = s.K > 0;
    Buf<double> ps(P), pd(P);
    seg_dispatch(ops, nops, [&](auto ch) {
        if (ch.n() == 0 || j < 0 || j >= ch.n()) return;
        const bool sparse = pool && vlast && j == seg_last_bn(ch);
        const int upto = seg_fwd_needed(ch);
#pragma omp parallel if (par_work(P * HW * (nops + 1)))
        {
            const int64_t bl = pool ? int64_t(s.S) * s.W : 1;
            Buf<float> band(bl + V), zeros(bl + V, true);
            SegGrad gr{dy, argmax, OHW, band.p, zeros.p, pool, s.S, s.W, s.OH, s.OW};
            SegConst cc[kMaxSegOps] = {};
            R vs[kMaxSegOps + 1];
            int64_t b, e;
            split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
            for (int64_t p = b; p < e; p++) {
                seg_consts(cc, ops, ch.n(), int(p % s.C), true);
                double ts = 0.0, td = 0.0;
                if (sparse) {
                    // ops after j are ReLUs: g_{j+1} = g where op j's output is > 0 (if any ReLU follows)
                    const bool mask = j + 1 < nops;
                    const float* g = dy + p * OHW;
                    const float* lv = vlast + p * OHW;
                    for (int64_t i0 = 0; i0 < OHW; i0 += RCHUNK) {
                        const int64_t i1 = min64(OHW, i0 + RCHUNK);
                        R a0 = Simd::zero(), c0 = Simd::zero();
                        for (int64_t i = i0; i < i1; i += V) {
                            const int k = int(min64(V, i1 - i));
                            const R u = ldk(lv + i, k);
                            R gv = ldk(g + i, k);
                            if (mask) gv = Simd::sel_gt0(seg_apply(ch, u, cc, j, j + 1), gv);
                            a0 = Simd::add(a0, gv);
                            c0 = Simd::fma(gv, Simd::sub(u, cc[j].m), c0);
                        }
                        ts += double(Simd::hsum(a0));
                        td += double(Simd::hsum(c0));
                    }
                } else {
                    const float* xp = x + p * HW;
                    seg_blocks(p, HW, gr, [&](int64_t i0, int len, const float* gb) {
                        R a0 = Simd::zero(), c0 = Simd::zero();
                        for (int i = 0; i < len; i += V) {
                            const int k = mini(V, len - i);
                            vs[0] = ldk(xp + i0 + i, k);
                            for (int t = 0; t < upto; t++) vs[t + 1] = seg_apply(ch, vs[t], cc, t, t + 1);
                            R g = seg_back(ch, ldk(gb + i, k), vs, cc, ch.n(), j + 1);
                            if (k < V)
                                g = Simd::loadp(reinterpret_cast<const float*>(&g), k);  // zero the tail
                            a0 = Simd::add(a0, g);
                            c0 = Simd::fma(g, Simd::sub(vs[j], cc[j].m), c0);
                        }
                        ts += double(Simd::hsum(a0));
                        td += double(Simd::hsum(c0));
                    });
                }
                ps[p] = ts;
                pd[p] = td;
            }
        }
    });
    for (int c = 0; c < s.C; c++) {
        double t0 = 0.0, t1 = 0.0;
        for (int n = 0; n < s.N; n++) {
            t0 += ps[int64_t(n) * s.C + c];
            t1 += pd[int64_t(n) * s.C + c];
        }
        sdy[c] = t0;
        sdx[c] = t1;
    }
}

// dx = gradient of the segment input (every batch norm needs its backward coefficients)
void seg_backward(float* dx, const float* x, const float* dy, const int32_t* argmax, const SegShape& s,
                  const SegOp* ops, int nops) {
    const int64_t HW = int64_t(s.H) * s.W, P = int64_t(s.N) * s.C, OHW = int64_t(s.OH) * s.OW;
    const bool pool = s.K > 0;
    const bool nt = P * HW * int64_t(sizeof(float)) > NT_BYTES;
    seg_dispatch(ops, nops, [&](auto ch) {
        if (ch.n() == 0) return;
        const int upto = seg_fwd_needed(ch);
#pragma omp parallel if (par_work(P * HW * (nops + 1)))
        {
            const int64_t bl = pool ? int64_t(s.S) * s.W : 1;
            Buf<float> band(bl + V), zeros(bl + V, true);
            SegGrad gr{dy, argmax, OHW, band.p, zeros.p, pool, s.S, s.W, s.OH, s.OW};
            SegConst cc[kMaxSegOps] = {};
            R vs[kMaxSegOps + 1];
            int64_t b, e;
            split_range(P, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
            for (int64_t p = b; p < e; p++) {
                seg_consts(cc, ops, ch.n(), int(p % s.C), true);
                const float* xp = x + p * HW;
                float* dxp = dx + p * HW;
                seg_blocks(p, HW, gr, [&](int64_t i0, int len, const float* gb) {
                    map_vec(dxp + i0, len, nt, [&](int64_t i, int k) {
                        vs[0] = ldk(xp + i0 + i, k);
                        for (int t = 0; t < upto; t++) vs[t + 1] = seg_apply(ch, vs[t], cc, t, t + 1);
                        return seg_back(ch, ldk(gb + i, k), vs, cc, ch.n(), 0);
                    });
                });
            }
        }
    });
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
