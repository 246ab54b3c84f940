// Tuned convolution backward, weights and bias (reference: conv_ref.cpp).
// Included by kernels_impl.h inside its per-ISA anonymous namespace (see there): no includes, no
// out-of-line std:: templates.

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
