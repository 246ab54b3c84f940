// Reference convolution: plain loops, double accumulators where a sum runs over a whole batch
// (declared in layers.h, shapes in ops.def). Tuned twin: ops/conv_*_simd.h.
#include "layers.h"

#include <cstring>

namespace ndlm {
namespace ref {

void conv_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s) {
    for (int n = 0; n < s.N; n++)
        for (int co = 0; co < s.Cout; co++)
            for (int oy = 0; oy < s.OH; oy++)
                for (int ox = 0; ox < s.OW; ox++) {
                    double acc = b ? b[co] : 0.0;
                    for (int ci = 0; ci < s.Cin; ci++)
                        for (int ky = 0; ky < s.KH; ky++) {
                            const int iy = oy * s.stride - s.pad + ky;
                            if (iy < 0 || iy >= s.H) continue;
                            for (int kx = 0; kx < s.KW; kx++) {
                                const int ix = ox * s.stride - s.pad + kx;
                                if (ix < 0 || ix >= s.W) continue;
                                acc += double(x[((int64_t(n) * s.Cin + ci) * s.H + iy) * s.W + ix]) *
                                       w[((int64_t(co) * s.Cin + ci) * s.KH + ky) * s.KW + kx];
                            }
                        }
                    y[((int64_t(n) * s.Cout + co) * s.OH + oy) * s.OW + ox] = float(acc);
                }
}

void conv_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                   const ConvShape& s) {
    if (dx) std::memset(dx, 0, sizeof(float) * size_t(s.N) * s.Cin * s.H * s.W);
    for (int co = 0; co < s.Cout; co++) {
        double sdb = 0.0;
        for (int n = 0; n < s.N; n++)
            for (int i = 0; i < s.OH * s.OW; i++) sdb += dy[(int64_t(n) * s.Cout + co) * s.OH * s.OW + i];
        if (db) db[co] += float(sdb);
        for (int ci = 0; ci < s.Cin; ci++)
            for (int ky = 0; ky < s.KH; ky++)
                for (int kx = 0; kx < s.KW; kx++) {
                    double acc = 0.0;
                    const float wv = w[((int64_t(co) * s.Cin + ci) * s.KH + ky) * s.KW + kx];
                    for (int n = 0; n < s.N; n++)
                        for (int oy = 0; oy < s.OH; oy++) {
                            const int iy = oy * s.stride - s.pad + ky;
                            if (iy < 0 || iy >= s.H) continue;
                            for (int ox = 0; ox < s.OW; ox++) {
                                const int ix = ox * s.stride - s.pad + kx;
                                if (ix < 0 || ix >= s.W) continue;
                                const float g = dy[((int64_t(n) * s.Cout + co) * s.OH + oy) * s.OW + ox];
                                const int64_t xi = ((int64_t(n) * s.Cin + ci) * s.H + iy) * s.W + ix;
                                acc += double(g) * x[xi];
                                if (dx) dx[xi] += g * wv;
                            }
                        }
                    dw[((int64_t(co) * s.Cin + ci) * s.KH + ky) * s.KW + kx] += float(acc);
                }
    }
}

}  // namespace ref
}  // namespace ndlm
