// Reference softmax and cross-entropy: plain loops, double accumulators where a sum runs over a whole batch
// (declared in layers.h, shapes in ops.def). Tuned twin: none: it runs once per batch on (N, K) logits.
#include "layers.h"

#include <algorithm>
#include <cmath>

namespace ndlm {
namespace ref {

void softmax_forward(float* probs, const float* logits, int N, int K) {
    for (int n = 0; n < N; n++) {
        const float* l = logits + int64_t(n) * K;
        float* p = probs + int64_t(n) * K;
        float mx = l[0];
        for (int k = 1; k < K; k++) mx = std::max(mx, l[k]);
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += std::exp(double(l[k]) - mx);
        for (int k = 0; k < K; k++) p[k] = float(std::exp(double(l[k]) - mx) / sum);
    }
}
float crossentropy_backward(float* dlogits, const float* probs, const int32_t* labels, int N, int K,
                            const float* weights) {
    if (weights) {  // weighted mean: sum w_n loss_n / sum w_n (MLPClassifier's normalization)
        double loss = 0.0, wsum = 0.0;
        for (int n = 0; n < N; n++) wsum += double(weights[n]);
        // weights 1 give the bits of the unweighted branch: wsum == N exactly, w * x == x
        const float sw = wsum > 0.0 ? float(wsum) : 1.f;  // all-zero weights: zero loss and gradient
        for (int n = 0; n < N; n++) {
            const float* p = probs + int64_t(n) * K;
            const float w = weights[n];
            if (w != 0.f) loss -= double(w) * std::log(std::max(double(p[labels[n]]), 1e-30));
            if (dlogits)
                for (int k = 0; k < K; k++)
                    dlogits[int64_t(n) * K + k] = (p[k] - (k == labels[n] ? 1.f : 0.f)) * w / sw;
        }
        return wsum > 0.0 ? float(loss / wsum) : 0.f;
    }
    double loss = 0.0;
    for (int n = 0; n < N; n++) {
        const float* p = probs + int64_t(n) * K;
        loss -= std::log(std::max(double(p[labels[n]]), 1e-30));
        if (dlogits)
            for (int k = 0; k < K; k++)
                dlogits[int64_t(n) * K + k] = (p[k] - (k == labels[n] ? 1.f : 0.f)) / N;
    }
    return float(loss / N);
}

}  // namespace ref
}  // namespace ndlm
