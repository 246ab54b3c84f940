// Reference fully connected layer: plain loops, double accumulators where a sum runs over a whole batch
// (declared in layers.h, shapes in ops.def). Tuned twin: ops/fc_simd.h.
#include "layers.h"

namespace ndlm {
namespace ref {

void fc_forward(float* y, const float* x, const float* w, const float* b, int N, int F, int O) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++) {
            double acc = b[o];
            for (int f = 0; f < F; f++) acc += double(x[int64_t(n) * F + f]) * w[int64_t(o) * F + f];
            y[int64_t(n) * O + o] = float(acc);
        }
}
void fc_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int N,
                 int F, int O) {
    for (int o = 0; o < O; o++) {
        double sdb = 0.0;
        for (int n = 0; n < N; n++) sdb += dy[int64_t(n) * O + o];
        db[o] += float(sdb);
        for (int f = 0; f < F; f++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++) acc += double(dy[int64_t(n) * O + o]) * x[int64_t(n) * F + f];
            dw[int64_t(o) * F + f] += float(acc);
        }
    }
    if (dx)
        for (int n = 0; n < N; n++)
            for (int f = 0; f < F; f++) {
                double acc = 0.0;
                for (int o = 0; o < O; o++) acc += double(dy[int64_t(n) * O + o]) * w[int64_t(o) * F + f];
                dx[int64_t(n) * F + f] = float(acc);
            }
}

}  // namespace ref
}  // namespace ndlm
