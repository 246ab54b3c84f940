// Reference ReLU: plain loops, double accumulators where a sum runs over a whole batch
// (declared in layers.h, shapes in ops.def). Tuned twin: ops/relu_simd.h.
#include "layers.h"

namespace ndlm {
namespace ref {

void relu_forward(float* y, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.f ? x[i] : 0.f;
}
void relu_backward(float* dx, const float* dy, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}

}  // namespace ref
}  // namespace ndlm
