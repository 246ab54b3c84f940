// Reference max pooling: plain loops, double accumulators where a sum runs over a whole batch
// (declared in layers.h, shapes in ops.def). Tuned twin: ops/maxpool_simd.h.
#include "layers.h"

#include <cstring>
#include <limits>

namespace ndlm {
namespace ref {

void maxpool_forward(float* y, int32_t* argmax, const float* x, int N, int C, int H, int W, int K, int S,
                     int OH, int OW) {
    for (int64_t p = 0; p < int64_t(N) * C; p++) {
        const float* xp = x + p * H * W;
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) {
                float best = -std::numeric_limits<float>::infinity();
                int32_t bi = (oy * S) * W + ox * S;
                for (int ky = 0; ky < K; ky++)
                    for (int kx = 0; kx < K; kx++) {
                        const int32_t i = (oy * S + ky) * W + ox * S + kx;
                        if (xp[i] > best) {
                            best = xp[i];
                            bi = i;
                        }
                    }
                y[p * OH * OW + oy * OW + ox] = best;
                argmax[p * OH * OW + oy * OW + ox] = bi;
            }
    }
}
void maxpool_backward(float* dx, const float* dy, const int32_t* argmax, int N, int C, int H, int W, int OH,
                      int OW) {
    std::memset(dx, 0, sizeof(float) * size_t(N) * C * H * W);
    for (int64_t p = 0; p < int64_t(N) * C; p++)
        for (int i = 0; i < OH * OW; i++) dx[p * H * W + argmax[p * OH * OW + i]] += dy[p * OH * OW + i];
}

}  // namespace ref
}  // namespace ndlm
