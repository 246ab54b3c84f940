// Convolution pieces shared by the forward, backward-data and backward-weights kernels.
// Included by kernels_impl.h inside its per-ISA anonymous namespace (see there): no includes, no
// out-of-line std:: templates.

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
#define NDLM_CONV_CMAX_FWD 5
#endif
#ifndef NDLM_CONV_CMAX_DW
#define NDLM_CONV_CMAX_DW (Simd::NREG >= 32 ? 5 : 4)
#endif

inline int nv_for(int cob) {
    int nv = NVMAX;
    while (nv > 1 && !tile_fits(cob, nv)) nv--;
    return nv;
}
