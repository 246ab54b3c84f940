// Tuned convolution backward, input gradient, and the conv_backward entry point (reference:
// conv_ref.cpp).
// Included by kernels_impl.h inside its per-ISA anonymous namespace (see there): no includes, no
// out-of-line std:: templates.

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
