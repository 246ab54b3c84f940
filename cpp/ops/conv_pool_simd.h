// Fused inference convolution -> pointwise chain -> non-overlapping max pool (ops.def:
// conv_pool_forward). Included by kernels_impl.h inside its per-ISA anonymous namespace, after
// conv_forward_simd.h whose micro-kernels (fwd_micro via plan_row / fwd_pick) it reuses: no
// includes, no out-of-line std:: templates.
//
// y[n, c, py, px] = chain_c(sgn[c] * max_{KxK window} z[n, c]) where z = conv(x; w, b) (the caller
// has folded the batch norms that directly follow the convolution into w, b, and multiplied
// channel c by sgn[c] = +-1). chain = ops [0, nops) (ReLU / inference batch norm) is monotone per
// channel: non-decreasing when sgn[c] = +1, non-increasing when sgn[c] = -1 (the caller's sign is the
// product of the signs of the chain's batch-norm scales), so the max of chain(z) over a window is
// chain(max z) or chain(min z) = chain(-max(-z)), exactly, in floating point too (rounding is
// monotone). The full-resolution conv output is never written: each band of K conv rows is
// computed one row at a time into a per-thread row buffer (Cout x OW floats, L1/L2 resident),
// reduced by an elementwise max into the window buffer, then pooled over columns.
//
// Work split over (image, band of pooled rows) items like conv_engine; the result of an item
// does not depend on the thread count.

void conv_pool_forward(float* y, const float* x, const float* w, const float* b, const float* sgn,
                       const ConvShape& s, const SegOp* ops, int nops, int K, int OH, int OW) {
    if (s.N <= 0 || s.Cout <= 0 || OH <= 0 || OW <= 0) return;
    const int OHc = OH * K, OWc = OW * K;  // conv rows / columns the windows cover
    const int nth = omp_get_max_threads();
    ConvGeo g;
    make_geo(g, s.N, s.Cin, s.H, s.W, s.Cout, s.KH, s.KW, s.stride, s.pad, s.pad, OHc, OWc, 16, 48 * 1024,
             nth);
    // bands of whole pooling windows: pb pooled rows per item
    int pb = maxi(1, g.band / K);
    pb = mini(pb, OH);
    while (pb > 1 && int64_t(s.N) * cdiv(OH, pb) < 4 * int64_t(nth)) pb = (pb + 1) / 2;
    g.band = pb * K;
    g.nbands = int(cdiv(OH, pb));
    g.BR = (g.band - 1) * s.stride + s.KH;
    g.buf_floats = int64_t(s.Cin) * g.BR * s.stride * g.WB + V;

    ConvBlocks B;
    make_blocks(B, s.Cout, NDLM_CONV_CMAX_FWD);
    const int64_t Kt = int64_t(s.Cin) * s.KH * s.KW;
    Buf<float> wp(int64_t(s.Cout) * Kt);
    pack_weights(wp.p, B, s.Cin, s.KH, s.KW, [&](int co, int ci, int ky, int kx) {
        return w[((int64_t(co) * s.Cin + ci) * s.KH + ky) * s.KW + kx];
    });
    Buf<int> koff(s.KW);
    for (int kx = 0; kx < s.KW; kx++) koff[kx] = (kx % g.s) * g.WB + kx / g.s;
    Buf<RowPlan> p1(B.nblk);
    for (int bl = 0; bl < B.nblk; bl++) {
        p1[bl] = RowPlan{nullptr, nullptr, g.OW, 0};
        if (B.cob[bl] <= CMAX) plan_row(p1[bl], B.cob[bl], nv_for(B.cob[bl]), g.OW, fwd_pick);
    }
    const int64_t OWs = round_up(OWc, V);  // row buffer stride per channel
    const int64_t in_img = int64_t(s.Cin) * s.H * s.W, out_plane = int64_t(OH) * OW;
    const int64_t items = int64_t(s.N) * g.nbands;
#pragma omp parallel if (par_work(items * pb * K * int64_t(OWc) * s.Cout * Kt / 8))
    {
        Buf<float> buf(g.buf_floats);
        Buf<float> wmax(s.Cout * OWs, true), row(s.Cout * OWs, true);
        int64_t ib, ie;
        split_range(items, omp_get_num_threads(), omp_get_thread_num(), &ib, &ie);
        FwdArgs a = fwd_args(g, koff.p);
        for (int64_t it = ib; it < ie; it++) {
            const int64_t n = it / g.nbands;
            const int py0 = int(it % g.nbands) * pb, np = mini(pb, OH - py0);
            prep_band(buf.p, x + n * in_img, g, py0 * K, np * K);
            for (int pr = 0; pr < np; pr++) {
                for (int k = 0; k < K; k++) {
                    const int r = pr * K + k;  // conv row inside the band
                    float* dst = k == 0 ? wmax.p : row.p;
                    for (int bl = 0; bl < B.nblk; bl++) {
                        const int c0 = B.c0[bl];
                        float* ob = dst + c0 * OWs;
                        a.wp = wp.p + c0 * Kt;
                        a.bias = b ? b + c0 : nullptr;
                        fwd_row(ob, OWs, a, buf.p, p1[bl], r * g.s, B.cob[bl], g.OW);
                    }
                    if (k > 0)
                        for (int64_t i = 0; i < s.Cout * OWs; i += V)
                            Simd::store(wmax.p + i, Simd::max(Simd::load(wmax.p + i), Simd::load(row.p + i)));
                }
                // columns: max over K, then the sign and the chain, per channel
                const int py = py0 + pr;
                for (int c = 0; c < s.Cout; c++) {
                    const float* m = wmax.p + c * OWs;
                    float* yo = y + (n * s.Cout + c) * out_plane + int64_t(py) * OW;
                    const float sg = sgn ? sgn[c] : 1.f;
                    for (int px = 0; px < OW; px++) {
                        const float* mw = m + int64_t(px) * K;
                        float v = mw[0];
                        for (int q = 1; q < K; q++) v = mw[q] > v ? mw[q] : v;
                        v *= sg;
                        for (int i = 0; i < nops; i++) {
                            if (ops[i].relu)
                                v = v > 0.f ? v : 0.f;
                            else
                                v = (v - ops[i].mean[c]) * ops[i].scale[c] + ops[i].shift[c];
                        }
                        yo[px] = v;
                    }
                }
            }
        }
    }
}
