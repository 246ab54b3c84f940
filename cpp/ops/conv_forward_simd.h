// Tuned convolution forward (reference: conv_ref.cpp); also the engine of the stride-1 dx.
// Included by kernels_impl.h inside its per-ISA anonymous namespace (see there): no includes, no
// out-of-line std:: templates.

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

// The micro-kernel arguments fixed by the geometry (per block the caller sets wp, bias, buf)
inline FwdArgs fwd_args(const ConvGeo& g, const int* koff) {
    FwdArgs a;
    a.koff = koff;
    a.ci_stride = int64_t(g.BR) * g.s * g.WB;
    a.row_stride = int64_t(g.s) * g.WB;
    a.Cin = g.Cin;
    a.KH = g.KH;
    a.KW = g.KW;
    a.s = g.s;
    a.OW = g.OW;
    return a;
}

// One output row of one block of channels (a.wp, a.bias set) from the band buffer buf: the tiles
// of plan q, or the scalar tile for blocks larger than CMAX (q.full null).
inline void fwd_row(float* ob, int64_t ostride, FwdArgs& a, const float* buf, const RowPlan& q, int rbase,
                    int cob, int OW) {
    if (!q.full) {
        a.buf = buf;
        fwd_scalar_block(ob, ostride, a, rbase, cob, OW);
        return;
    }
    int ox0 = 0;
    for (; ox0 + q.step <= OW; ox0 += q.step) {
        a.buf = buf + ox0;
        q.full(ob + ox0, ostride, a, rbase, V);
    }
    if (ox0 < OW) {
        a.buf = buf + ox0;
        q.rem(ob + ox0, ostride, a, rbase, q.nlast);
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
        FwdArgs a = fwd_args(g, koff.p);
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
                    fwd_row(ob, ostride, a, buf.p, p1[b], r * g.s, B.cob[b], g.OW);
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
