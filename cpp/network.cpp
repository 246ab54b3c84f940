#include "network.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>

#include <unistd.h>

#include "checked_size.h"
#include "kernels.h"
#include "ops/shared.h"

namespace ndlm {

static const char* type_name(LayerType t) {
    switch (t) {
#define NDLM_LAYER(Enum, name, keys) \
    case LayerType::Enum:            \
        return name;
#include "layer_types.def"
    }
    return "?";
}

static std::invalid_argument layer_error(size_t i, LayerType t, const std::string& msg) {
    return std::invalid_argument("layer " + std::to_string(i) + " (" + type_name(t) + "): " + msg);
}

// An output height or width computed in 64 bits, refused when it does not fit the int the
// kernels index with (long stacks of padded convolutions grow without bound otherwise)
static int out_extent(int64_t v, size_t i, LayerType t, const char* what) {
    if (v > kMaxExtent)
        throw layer_error(i, t,
                          std::string("output ") + what + " " + std::to_string(v) + " exceeds " +
                              std::to_string(kMaxExtent));
    return int(v);
}

// Glorot-uniform from a 64-bit Mersenne twister; the float is built from the top 24 bits so the
// same seed gives the same weights with any compiler or standard library.
static void glorot_uniform(float* w, int64_t n, double fan_in, double fan_out, std::mt19937_64& rng) {
    const double limit = std::sqrt(6.0 / (fan_in + fan_out));
    for (int64_t i = 0; i < n; i++) {
        const double u = double(rng() >> 40) / double(1 << 24);  // [0, 1)
        w[i] = float((2.0 * u - 1.0) * limit);
    }
}

Network::Network(const std::vector<LayerSpec>& specs, int H, int W, int C, int n_classes, uint64_t seed,
                 int n_threads, float input_scale, bool fuse)
    : H_(H), W_(W), C_(C), K_(n_classes), n_threads_(std::max(1, n_threads)), input_scale_(input_scale) {
    if (H < 1 || W < 1 || C < 1)
        throw std::invalid_argument("input shape must be positive, got " + std::to_string(H) + "x" +
                                    std::to_string(W) + "x" + std::to_string(C));
    if (n_classes < 2)
        throw std::invalid_argument("need at least 2 classes, got " + std::to_string(n_classes));
    if (specs.empty()) throw std::invalid_argument("the layer stack is empty");
    if (!std::isfinite(input_scale)) throw std::invalid_argument("input_scale must be finite");
    int c = C, h = H, w = W;
    int64_t P = 0, R = 0;
    for (size_t i = 0; i < specs.size(); i++) {
        Layer L;
        L.spec = specs[i];
        const LayerSpec& s = L.spec;
        L.inC = c;
        L.inH = h;
        L.inW = w;
        try {
        switch (s.type) {
            case LayerType::BatchNorm:
                if (!(s.eps > 0)) throw layer_error(i, s.type, "eps must be > 0");
                if (!(s.momentum >= 0 && s.momentum <= 1))
                    throw layer_error(i, s.type, "momentum must be in [0, 1]");
                L.w_off = P;
                L.n_w = c;
                P = checked_add(P, c, "parameters");
                L.b_off = P;
                L.n_b = c;
                P = checked_add(P, c, "parameters");
                L.run_off = R;
                R = checked_add(R, checked_mul(2, c), "running statistics");
                break;
            case LayerType::LRN:
                if (s.size < 1 || s.size % 2 == 0)
                    throw layer_error(
                        i, s.type,
                        "window size must be a positive odd number, got " + std::to_string(s.size));
                if (!(s.k > 0)) throw layer_error(i, s.type, "K must be > 0");
                if (!(s.alpha >= 0) || !(s.beta >= 0))
                    throw layer_error(i, s.type, "alpha and beta must be >= 0");
                break;
            case LayerType::Conv: {
                if (s.filters < 1) throw layer_error(i, s.type, "filters must be >= 1");
                if (s.kh < 1 || s.kw < 1) throw layer_error(i, s.type, "kernel size must be >= 1");
                if (s.stride < 1) throw layer_error(i, s.type, "stride must be >= 1");
                if (s.pad < 0) throw layer_error(i, s.type, "padding must be >= 0");
                if (h < 1 || w < 1 || int64_t(h) + 2 * int64_t(s.pad) < s.kh || int64_t(w) + 2 * int64_t(s.pad) < s.kw)
                    throw layer_error(i, s.type,
                                      "kernel " + std::to_string(s.kh) + "x" + std::to_string(s.kw) +
                                          " is larger than its input " + std::to_string(h) + "x" +
                                          std::to_string(w) + " (padding " + std::to_string(s.pad) + ")");
                L.outC = s.filters;
                L.outH = out_extent((int64_t(h) + 2 * int64_t(s.pad) - s.kh) / s.stride + 1, i, s.type, "height");
                L.outW = out_extent((int64_t(w) + 2 * int64_t(s.pad) - s.kw) / s.stride + 1, i, s.type, "width");
                L.w_off = P;
                L.n_w = checked_prod({s.filters, c, s.kh, s.kw}, "conv weights");
                P = checked_add(P, L.n_w, "parameters");
                L.b_off = P;
                L.n_b = s.filters;
                P = checked_add(P, s.filters, "parameters");
                c = L.outC;
                h = L.outH;
                w = L.outW;
                break;
            }
            case LayerType::ReLU:
                break;
            case LayerType::MaxPool:
                if (s.kh < 1 || s.kw < 1) throw layer_error(i, s.type, "pool size must be >= 1");
                if (s.kh != s.kw) throw layer_error(i, s.type, "only square pooling windows are supported");
                if (s.stride < 1) throw layer_error(i, s.type, "stride must be >= 1");
                if (h < s.kh || w < s.kw)
                    throw layer_error(i, s.type,
                                      "pool window " + std::to_string(s.kh) + "x" + std::to_string(s.kw) +
                                          " is larger than its input " + std::to_string(h) + "x" +
                                          std::to_string(w));
                L.outC = c;
                L.outH = (h - s.kh) / s.stride + 1;
                L.outW = (w - s.kw) / s.stride + 1;
                h = L.outH;
                w = L.outW;
                break;
            case LayerType::FC: {
                const int units = s.units > 0 ? s.units : n_classes;
                L.spec.units = units;
                const int64_t F = checked_prod({c, h, w}, "fc inputs");
                L.outC = units;
                L.outH = 1;
                L.outW = 1;
                L.w_off = P;
                L.n_w = checked_mul(units, F, "fc weights");
                P = checked_add(P, L.n_w, "parameters");
                L.b_off = P;
                L.n_b = units;
                P = checked_add(P, units, "parameters");
                c = units;
                h = 1;
                w = 1;
                break;
            }
            case LayerType::Softmax:
                if (i + 1 != specs.size()) throw layer_error(i, s.type, "softmax can only be the last layer");
                break;
        }
        } catch (const SizeError& e) {
            throw layer_error(i, s.type, e.what());
        }
        if (s.type != LayerType::Conv && s.type != LayerType::MaxPool && s.type != LayerType::FC) {
            L.outC = c;
            L.outH = h;
            L.outW = w;
        }
        layers_.push_back(L);
    }
    if (checked_prod({c, h, w}) != n_classes)
        throw std::invalid_argument("the stack must end with n_classes = " + std::to_string(n_classes) +
                                    " outputs (a fully connected layer), but it ends with " +
                                    std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w));
    if (P == 0) throw std::invalid_argument("the layer stack has no trainable parameters");
    P_ = P;
    const char* env = std::getenv("NDLM_SK_FUSE");
    fuse_ = fuse && !(env && std::strcmp(env, "0") == 0);
    R_ = R;
    plan_segments();
    // Before anything big is allocated: the whole network with a batch of one image must fit the
    // machine's memory, then every per-image size must fit the kernels' int indexing.
    check_memory(1);
    for (size_t i = 0; i < layers_.size(); i++) {
        const Layer& L = layers_[i];
        for (int64_t n : {L.in_size(), L.out_size()})
            if (n > kMaxExtent)
                throw layer_error(i, L.spec.type,
                                  "input " + std::to_string(L.inC) + "x" + std::to_string(L.inH) + "x" +
                                      std::to_string(L.inW) + " -> output " + std::to_string(L.outC) + "x" +
                                      std::to_string(L.outH) + "x" + std::to_string(L.outW) + " has more than " +
                                      std::to_string(kMaxExtent) + " values per image (the kernels' limit)");
    }
    plan_inference();
    layer_seconds_.assign(2 * layers_.size(), 0.0);
    mem_.assign(checked_count(checked_mul(4, P, "parameter block")), 0.f);
    running_.assign(checked_count(R), 0.f);
    std::mt19937_64 rng(seed);
    for (Layer& L : layers_) {
        if (L.spec.type == LayerType::BatchNorm) {
            std::fill_n(params() + L.w_off, L.n_w, 1.f);                   // gamma
            std::fill_n(running_.data() + L.run_off + L.inC, L.inC, 1.f);  // running var
        } else if (L.spec.type == LayerType::Conv) {
            const double rf = double(L.spec.kh) * L.spec.kw;
            glorot_uniform(params() + L.w_off, L.n_w, rf * L.inC, rf * L.outC, rng);
        } else if (L.spec.type == LayerType::FC) {
            glorot_uniform(params() + L.w_off, L.n_w, double(L.in_size()), double(L.outC), rng);
        }
    }
}

// Fusion plan: maximal runs of batch norm / ReLU layers (pointwise, one resolution), each with
// the max pool that follows it when the pool does not overlap (stride == window). A run is fused
// when it is followed by such a pool or has at least two layers (a lone ReLU already runs in
// place). Layers inside a segment get no activation buffer; the segment's output (or the pool's)
// does. Overlapping pools stay separate layers after the fused run.
void Network::plan_segments() {
    const int nl = int(layers_.size());
    segments_.clear();
    seg_start_.assign(size_t(nl), -1);
    seg_end_.assign(size_t(nl), -1);
    in_seg_.assign(size_t(nl), -1);
    seg_aux_.assign(size_t(nl), {});
    if (!fuse_) return;
    auto pointwise = [](LayerType t) { return t == LayerType::BatchNorm || t == LayerType::ReLU; };
    for (int i = 0; i < nl;) {
        if (!pointwise(layers_[size_t(i)].spec.type)) {
            i++;
            continue;
        }
        int j = i;
        while (j + 1 < nl && pointwise(layers_[size_t(j + 1)].spec.type) && j + 1 - i < kMaxSegOps) j++;
        Segment sg;
        sg.first = i;
        sg.last = j;
        if (j + 1 < nl) {
            const Layer& P = layers_[size_t(j + 1)];
            if (P.spec.type == LayerType::MaxPool && P.spec.stride == P.spec.kh && P.spec.kh == P.spec.kw &&
                P.outH > 0 && P.outW > 0)
                sg.pool = j + 1;
        }
        if (sg.pool >= 0 || j > i) {
            const int id = int(segments_.size());
            segments_.push_back(sg);
            seg_start_[size_t(i)] = id;
            seg_end_[size_t(sg.end())] = id;
            for (int l = i; l <= sg.end(); l++) in_seg_[size_t(l)] = id;
            for (int l = i; l <= j; l++)
                if (layers_[size_t(l)].spec.type == LayerType::BatchNorm)
                    seg_aux_[size_t(l)].assign(size_t(4 * layers_[size_t(l)].inC), 0.f);
        }
        i = sg.end() + 1;
    }
}

// ---- memory: the estimate checked before buffers are allocated ---------------------------------

double memory_limit_bytes() {
    if (const char* env = std::getenv("NDLM_SK_MEMORY_LIMIT")) {
        char* e = nullptr;
        const double v = std::strtod(env, &e);
        if (e != env && v > 0) return v;
    }
    double m = std::numeric_limits<double>::infinity();
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) m = double(pages) * double(page);
    // a container's memory limit (cgroup v2 / v1), when lower
    for (const char* f : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
        if (FILE* fp = std::fopen(f, "r")) {
            double v = 0;
            if (std::fscanf(fp, "%lf", &v) == 1 && v > 0) m = std::min(m, v);
            std::fclose(fp);
        }
    }
    return m;
}

static std::string fmt_bytes(double b) {
    char buf[64];
    if (b >= 1e15)
        std::snprintf(buf, sizeof buf, "%.3g bytes", b);
    else if (b >= double(int64_t(1) << 30))
        std::snprintf(buf, sizeof buf, "%.3g bytes (%.1f GiB)", b, b / double(int64_t(1) << 30));
    else
        std::snprintf(buf, sizeof buf, "%.3g bytes (%.1f MiB)", b, b / double(1 << 20));
    return buf;
}

// Scratch the tuned kernels of layer L allocate for a batch of B images with nth threads, in
// bytes: an upper bound read off the kernels (ops/*_simd.h), V = 16 floats (the widest vector).
static double kernel_scratch_bytes(const Layer& L, bool in_segment, double B, double nth) {
    const double V = 16, f = 4, d = 8;
    const double C = L.inC, H = L.inH, W = L.inW, HW = H * W;
    const LayerSpec& s = L.spec;
    double b = 0;
    switch (s.type) {
        case LayerType::BatchNorm:  // per-plane double partials, per-channel coefficients
            b = 2 * d * B * C + 3 * f * C;
            if (in_segment) b += nth * f * (HW + 2 * (double(L.inW) * 64 + 2 * V));  // plane, bands
            break;
        case LayerType::LRN:  // three C x 512 chunks per thread
            b = nth * f * 3 * (C + 1) * 512;
            break;
        case LayerType::Conv: {  // packed weights, per-thread dw partials, per-thread band buffers
            // (conv_common_simd.h make_geo: at most 16 output rows per band, s column phases)
            const double st = s.stride;
            const double fwd = C * ((std::min(16, L.outH) - 1) * st + s.kh) * st *
                               (double(L.outW) + (s.kw - 1) / s.stride + 1 + 2 * V);
            const double bwd = double(L.outC) * (std::min(16, L.inH) - 1 + s.kh) * (W + s.kw + 2 * V);
            const double band = std::max(fwd, bwd) + V;
            b = f * double(L.n_w) + d * nth * (double(L.n_w) + L.outC + 8) + nth * f * std::max(band, 96.0 * 1024);
            break;
        }
        case LayerType::MaxPool:
            b = nth * f * (4 * ((double(L.outW) + V) * s.stride + s.kh) + 8 * W + 3 * V);
            if (in_segment) b += nth * f * (HW + 2 * (double(s.stride) * W + V));
            break;
        case LayerType::FC:  // dw column blocks of 512 in double
            b = d * double(L.outC) * 512;
            break;
        case LayerType::ReLU:
            if (in_segment) b = nth * f * (HW + 2 * V);
            break;
        case LayerType::Softmax:
            b = f * B * double(L.out_size());
            break;
    }
    return b;
}

// Whether layer l has an activation buffer of its own (see ensure_buffers)
static bool own_buffer(const Layer& L, int seg_id, bool seg_out) {
    return seg_id >= 0 ? seg_out : L.spec.type != LayerType::ReLU;
}

Network::MemoryEstimate Network::memory_estimate(int64_t Bi) const {
    // in double: exact enough, and no overflow whatever the shapes (the allocations themselves
    // use checked int64 sizes)
    const double B = double(Bi), nth = double(n_threads_), f = 4;
    MemoryEstimate e;
    double fixed = 4 * f * double(P_) + f * double(R_);  // params | grads | adam m | adam v, running
    if (fuse_) fixed += f * double(2 * P_ + R_);  // fused inference: folded weights, their key copy
    const double in_bytes = f * B * double(C_) * H_ * W_;
    double total = in_bytes, dmax = double(C_) * H_ * W_, scratch = 0;
    std::vector<double> share(layers_.size());
    for (size_t l = 0; l < layers_.size(); l++) {
        const Layer& L = layers_[l];
        const int sid = in_seg_[l];
        const bool seg_out = sid >= 0 && size_t(segments_[size_t(sid)].end()) == l;
        const double out = double(L.out_size());
        double own = 4 * f * double(L.n_w + L.n_b);  // its parameters, gradients, Adam moments
        if (own_buffer(L, sid, seg_out)) own += f * B * out;
        if (L.spec.type == LayerType::MaxPool) own += f * B * out;  // argmax
        if (seg_out && L.spec.type == LayerType::MaxPool) own += f * B * out;  // vlast
        if (L.spec.type == LayerType::BatchNorm) own += 2 * f * L.inC + (sid >= 0 ? 4 * f * L.inC : 0);
        const double sc = kernel_scratch_bytes(L, sid >= 0, B, nth);
        total += own - 4 * f * double(L.n_w + L.n_b);
        scratch = std::max(scratch, sc);
        dmax = std::max(dmax, out);
        share[l] = own + sc + 2 * f * B * out;  // + the two gradient buffers at its size
    }
    // + the code and runtime pages the first pass touches and the threads' stacks (a margin)
    total += fixed + 2 * f * B * dmax + scratch + double(16 << 20) + nth * double(1 << 20);
    e.bytes = total;
    for (size_t l = 0; l < layers_.size(); l++)
        if (share[l] > e.worst_bytes) {
            e.worst_bytes = share[l];
            e.worst_layer = l;
        }
    return e;
}

void Network::check_memory(int64_t B) const {
    const double limit = memory_limit_bytes();
    const MemoryEstimate e = memory_estimate(B);
    if (!(e.bytes > limit)) return;
    const Layer& L = layers_[e.worst_layer];
    throw layer_error(e.worst_layer, L.spec.type,
                      "output " + std::to_string(L.outC) + "x" + std::to_string(L.outH) + "x" +
                          std::to_string(L.outW) + " per image needs " + fmt_bytes(e.worst_bytes) +
                          " for a batch of " + std::to_string(B) +
                          " (its activations, gradients, parameters and kernel scratch; the whole network " +
                          fmt_bytes(e.bytes) + "), more than this machine's memory, " + fmt_bytes(limit));
}

void Network::ensure_buffers(int64_t B) {
    if (B <= cap_) return;
    if (B > kMaxExtent)
        throw std::invalid_argument("batches of more than " + std::to_string(kMaxExtent) + " images are not supported");
    check_memory(B);
    release_buffers();  // cap_ = 0 until every buffer is in place (an allocation may throw)
    const size_t nl = layers_.size();
    acts_.assign(nl + 1, {});
    stats_.assign(nl, {});
    argmax_.assign(nl, {});
    const int64_t in_n = checked_prod({B, C_, H_, W_}, "input batch");
    acts_[0].resize(checked_count(in_n));
    int64_t dmax = in_n;
    for (size_t l = 0; l < nl; l++) {
        const Layer& L = layers_[l];
        const int64_t n = checked_mul(B, L.out_size(), "activations x batch");
        // ReLU runs in place (its backward needs only its output; no other layer's backward
        // needs its own output), so it gets no buffer of its own. Inside a fused segment only
        // the segment's output has a buffer (it is never the segment's input).
        const int sid = in_seg_[l];
        const bool seg_out = sid >= 0 && size_t(segments_[size_t(sid)].end()) == l;
        if (own_buffer(L, sid, seg_out)) acts_[l + 1].resize(checked_count(n));
        if (L.spec.type == LayerType::BatchNorm) stats_[l].resize(checked_count(checked_mul(2, L.inC)));
        if (L.spec.type == LayerType::MaxPool) argmax_[l].resize(checked_count(n));
        dmax = std::max(dmax, n);
    }
    dbuf_[0].resize(checked_count(dmax));
    dbuf_[1].resize(checked_count(dmax));
    seg_vlast_.assign(segments_.size(), {});
    for (size_t i = 0; i < segments_.size(); i++) {
        const Segment& sg = segments_[i];
        bool has_bn = false;
        for (int l = sg.first; l <= sg.last; l++)
            has_bn |= layers_[size_t(l)].spec.type == LayerType::BatchNorm;
        if (sg.pool >= 0 && has_bn)
            seg_vlast_[i].resize(
                checked_count(checked_mul(B, layers_[size_t(sg.pool)].out_size(), "activations x batch")));
    }
    act_.assign(nl + 1, nullptr);
    act_[0] = acts_[0].data();
    for (size_t l = 0; l < nl; l++)
        act_[l + 1] = !acts_[l + 1].empty() ? acts_[l + 1].data()
                      : in_seg_[l] >= 0     ? nullptr   // not materialised
                                            : act_[l];  // ReLU in place
    cap_ = B;
}

void Network::release_buffers() {
    iact_.clear();
    iarg_.clear();
    acts_.clear();
    stats_.clear();
    argmax_.clear();
    act_.clear();
    seg_vlast_.clear();
    for (auto& d : dbuf_) {
        d.clear();
        d.shrink_to_fit();
    }
    cap_ = 0;
}

// (n, H, W, C) uint8/float32 rows X[idx[i]] -> (B, C, H, W) float32, times input_scale, then
// minus in_shift_ and times in_mult_ when an input normalization is set
void Network::load_batch(float* dst, const ImageBatch& X, const int64_t* idx, int64_t B) const {
    const int64_t img = int64_t(H_) * W_ * C_;
#pragma omp parallel for schedule(static) if (B * img >= kParMinWork)
    for (int64_t i = 0; i < B; i++) load_image(dst + i * img, X, idx ? idx[i] : i, nullptr, nullptr);
}

// One image X[src] -> d (C, H, W), as load_batch; then y = bn_a[c] x + bn_b[c] when bn_a is given
// (the leading batch norms of the fused inference plan)
void Network::load_image(float* d, const ImageBatch& X, int64_t src, const float* bn_a,
                         const float* bn_b) const {
    const int64_t HW = int64_t(H_) * W_, img = HW * C_;
    const float sc = input_scale_;
    const int C = C_;
    const float* sh = in_shift_.empty() ? nullptr : in_shift_.data();
    const float* mu = in_mult_.data();
    if (X.is_uint8) {
        // a table of the 256 values per channel (the same float operations as computing each);
        // the batch norm goes into it when no per-element normalization comes in between
        const uint8_t* s = static_cast<const uint8_t*>(X.data) + src * img;
        const bool bn_in_lut = bn_a && !sh;
        float lut_small[3 * 256];
        std::vector<float> lut_big;
        float* lut = lut_small;
        if (C > 3) {
            lut_big.resize(size_t(256) * C);
            lut = lut_big.data();
        }
        for (int c = 0; c < C; c++)
            for (int v = 0; v < 256; v++) {
                const float x = float(v) * sc;
                lut[c * 256 + v] = bn_in_lut ? x * bn_a[c] + bn_b[c] : x;
            }
        if (C == 3) {
            float *d0 = d, *d1 = d + HW, *d2 = d + 2 * HW;
            const float *l0 = lut, *l1 = lut + 256, *l2 = lut + 512;
            for (int64_t p = 0; p < HW; p++) {
                d0[p] = l0[s[3 * p]];
                d1[p] = l1[s[3 * p + 1]];
                d2[p] = l2[s[3 * p + 2]];
            }
        } else {
            for (int64_t p = 0; p < HW; p++)
                for (int c = 0; c < C; c++) d[c * HW + p] = lut[c * 256 + s[p * C + c]];
        }
        if (bn_in_lut) bn_a = nullptr;
    } else {
        const float* s = static_cast<const float*>(X.data) + src * img;
        for (int64_t p = 0; p < HW; p++)
            for (int c = 0; c < C; c++) d[c * HW + p] = s[p * C + c] * sc;
    }
    if (sh)
        for (int64_t p = 0; p < HW; p++)
            for (int c = 0; c < C; c++) d[c * HW + p] = (d[c * HW + p] - sh[p * C + c]) * mu[p * C + c];
    if (bn_a)
        for (int c = 0; c < C; c++) {
            float* dc = d + c * HW;
            const float a = bn_a[c], b = bn_b[c];
            for (int64_t p = 0; p < HW; p++) dc[p] = dc[p] * a + b;
        }
}

void Network::set_input_norm(const std::vector<float>& shift, const std::vector<float>& mult) {
    const size_t img = size_t(H_) * W_ * C_;
    if (shift.empty() && mult.empty()) {
        in_shift_.clear();
        in_mult_.clear();
        return;
    }
    if (shift.size() != img || mult.size() != img)
        throw std::invalid_argument("input normalization needs height*width*channels = " +
                                    std::to_string(img) + " values for shift and mult, got " +
                                    std::to_string(shift.size()) + " and " + std::to_string(mult.size()));
    for (size_t e = 0; e < img; e++)
        if (!std::isfinite(shift[e]) || !std::isfinite(mult[e]))
            throw std::invalid_argument("input normalization values must be finite");
    in_shift_ = shift;
    in_mult_ = mult;
}

void Network::population_stats(const ImageBatch& X, const int64_t* idx, int64_t m, int64_t chunk) {
    omp_set_num_threads(n_threads_);
    if (m < 1) throw std::invalid_argument("population statistics need at least one image");
    chunk = std::max<int64_t>(1, std::min(chunk, m));
    ensure_buffers(chunk);
    // per batch norm layer: sum over chunks of M_b * mean_b and M_b * (var_b + mean_b^2), in double
    std::vector<std::vector<double>> acc(layers_.size());
    for (size_t l = 0; l < layers_.size(); l++)
        if (layers_[l].spec.type == LayerType::BatchNorm) acc[l].assign(size_t(2 * layers_[l].inC), 0.0);
    std::vector<int64_t> ids(static_cast<size_t>(chunk));
    for (int64_t s = 0; s < m; s += chunk) {
        const int64_t B = std::min(chunk, m - s);
        for (int64_t i = 0; i < B; i++) ids[size_t(i)] = idx ? idx[s + i] : s + i;
        load_batch(acts_[0].data(), X, ids.data(), B);
        forward(B, true, false);
        for (size_t l = 0; l < layers_.size(); l++) {
            if (acc[l].empty()) continue;
            const Layer& L = layers_[l];
            const float* mean = stats_[l].data();
            const float* rstd = mean + L.inC;
            const double Mb = double(B) * L.inH * L.inW;
            for (int c = 0; c < L.inC; c++) {
                const double var = 1.0 / (double(rstd[c]) * rstd[c]) - L.spec.eps;
                acc[l][size_t(c)] += Mb * mean[c];
                acc[l][size_t(L.inC + c)] += Mb * (var + double(mean[c]) * mean[c]);
            }
        }
    }
    for (size_t l = 0; l < layers_.size(); l++) {
        if (acc[l].empty()) continue;
        const Layer& L = layers_[l];
        const double M = double(m) * L.inH * L.inW;
        float* rmean = running_.data() + L.run_off;
        float* rvar = rmean + L.inC;
        for (int c = 0; c < L.inC; c++) {
            const double mean = acc[l][size_t(c)] / M;
            const double var = std::max(0.0, acc[l][size_t(L.inC + c)] / M - mean * mean);
            rmean[c] = float(mean);
            rvar[c] = float(M > 1 ? var * M / (M - 1) : var);
        }
    }
}

// Running statistics of a batch norm layer from its batch mean and rstd (N images)
void Network::update_running(const Layer& L, const float* mean, const float* rstd, int64_t N) {
    const LayerSpec& s = L.spec;
    float* rmean = running_.data() + L.run_off;
    float* rvar = rmean + L.inC;
    const int HW = L.inH * L.inW;
    const double M = double(N) * HW;
    for (int c = 0; c < L.inC; c++) {
        const double var = 1.0 / (double(rstd[c]) * rstd[c]) - s.eps;
        const double unbiased = M > 1 ? var * M / (M - 1) : var;
        rmean[c] = (1 - s.momentum) * rmean[c] + s.momentum * mean[c];
        rvar[c] = float((1 - s.momentum) * rvar[c] + s.momentum * unbiased);
    }
}

// The ops and shape of a fused segment (train: batch statistics in stats_, else running ones)
int Network::seg_ops(const Segment& sg, SegOp* ops, SegShape* sh, int64_t B, bool train) {
    const Layer& F = layers_[size_t(sg.first)];
    sh->N = int(B);
    sh->C = F.inC;
    sh->H = F.inH;
    sh->W = F.inW;
    if (sg.pool >= 0) {
        const Layer& P = layers_[size_t(sg.pool)];
        sh->K = P.spec.kh;
        sh->S = P.spec.stride;
        sh->OH = P.outH;
        sh->OW = P.outW;
    }
    int n = 0;
    for (int l = sg.first; l <= sg.last; l++, n++) {
        const Layer& L = layers_[size_t(l)];
        SegOp& op = ops[n];
        op = SegOp{};
        if (L.spec.type == LayerType::ReLU) {
            op.relu = true;
            continue;
        }
        const int C = L.inC;
        float* aux = seg_aux_[size_t(l)].data();
        op.mean = train ? stats_[size_t(l)].data() : running_.data() + L.run_off;
        op.scale = aux;
        op.shift = params() + L.b_off;
        op.ka = aux + C;
        op.kb = aux + 2 * C;
        op.kx = aux + 3 * C;
    }
    return n;
}

// Forward of a fused segment: one pass over its input per batch norm for the statistics (in
// training), then one pass applying the segment (and the pool) into the output buffer.
void Network::forward_segment(const Segment& sg, int64_t B, bool train, bool update_running) {
    SegOp ops[kMaxSegOps];
    SegShape sh;
    const int nops = seg_ops(sg, ops, &sh, B, train);
    const float* x0 = act_[size_t(sg.first)];
    for (int j = 0; j < nops; j++) {
        if (ops[j].relu) continue;
        const Layer& L = layers_[size_t(sg.first + j)];
        const float* gamma = params() + L.w_off;
        float* scale = seg_aux_[size_t(sg.first + j)].data();
        if (train) {
            float* mean = stats_[size_t(sg.first + j)].data();
            float* rstd = mean + L.inC;
            fast::seg_bn_stats(mean, rstd, x0, sh, ops, j, L.spec.eps);
            for (int c = 0; c < L.inC; c++) scale[c] = gamma[c] * rstd[c];  // as batchnorm_forward_train
            if (update_running) this->update_running(L, mean, rstd, B);
        } else {
            const float* rvar = running_.data() + L.run_off + L.inC;
            for (int c = 0; c < L.inC; c++) scale[c] = gamma[c] / std::sqrt(rvar[c] + L.spec.eps);
        }
    }
    const int e = sg.end();
    std::vector<float>& vl = seg_vlast_[size_t(in_seg_[size_t(sg.first)])];
    fast::seg_forward(act_[size_t(e) + 1], sg.pool >= 0 ? argmax_[size_t(sg.pool)].data() : nullptr,
                      train && !vl.empty() ? vl.data() : nullptr, x0, sh, ops, nops);
}

// Backward of a fused segment: per batch norm (last first) one pass for its sums, then one pass
// writing the gradient of the segment input (skipped when din is null).
void Network::backward_segment(const Segment& sg, const float* dout, float* din, int64_t B) {
    SegOp ops[kMaxSegOps];
    SegShape sh;
    const int nops = seg_ops(sg, ops, &sh, B, true);
    const float* x0 = act_[size_t(sg.first)];
    const int32_t* am = sg.pool >= 0 ? argmax_[size_t(sg.pool)].data() : nullptr;
    const std::vector<float>& vl = seg_vlast_[size_t(in_seg_[size_t(sg.first)])];
    for (int j = nops - 1; j >= 0; j--) {
        if (ops[j].relu) continue;
        const Layer& L = layers_[size_t(sg.first + j)];
        const int C = L.inC;
        std::vector<double> sd(size_t(2 * C));
        fast::seg_bwd_sums(sd.data(), sd.data() + C, x0, dout, am, vl.empty() ? nullptr : vl.data(), sh, ops,
                           nops, j);
        // as batchnorm_backward
        const float* rstd = stats_[size_t(sg.first + j)].data() + C;
        const float* gamma = params() + L.w_off;
        float* dgamma = grads() + L.w_off;
        float* dbeta = grads() + L.b_off;
        float* aux = seg_aux_[size_t(sg.first + j)].data();
        const double M = double(B) * (L.inH * L.inW);
        for (int c = 0; c < C; c++)
            bn_backward_coefs(sd[size_t(c)], sd[size_t(C + c)], rstd[c], gamma[c], M, &dgamma[c], &dbeta[c],
                              &aux[C + c], &aux[2 * C + c], &aux[3 * C + c]);
    }
    if (din) fast::seg_backward(din, x0, dout, am, sh, ops, nops);
}

void Network::forward(int64_t B, bool train, bool update_running) {
    const int N = int(B);
    for (size_t l = 0; l < layers_.size(); l++) {
        const double t0 = omp_get_wtime();
        if (seg_start_[l] >= 0) {
            const Segment& sg = segments_[size_t(seg_start_[l])];
            forward_segment(sg, B, train, update_running);
            layer_seconds_[2 * l] += omp_get_wtime() - t0;
            l = size_t(sg.end());
            continue;
        }
        const Layer& L = layers_[l];
        const LayerSpec& s = L.spec;
        const float* in = act_[l];
        float* out = act_[l + 1];
        const int HW = L.inH * L.inW;
        switch (s.type) {
            case LayerType::BatchNorm: {
                const float* gamma = params() + L.w_off;
                const float* beta = params() + L.b_off;
                float* rmean = running_.data() + L.run_off;
                float* rvar = rmean + L.inC;
                if (train) {
                    float* mean = stats_[l].data();
                    float* rstd = mean + L.inC;
                    fast::batchnorm_forward_train(out, mean, rstd, in, gamma, beta, N, L.inC, HW, s.eps);
                    if (update_running) this->update_running(L, mean, rstd, N);
                } else {
                    fast::batchnorm_forward_infer(out, in, gamma, beta, rmean, rvar, N, L.inC, HW, s.eps);
                }
                break;
            }
            case LayerType::LRN:
                fast::lrn_forward(out, in, N, L.inC, HW, s.size, s.alpha, s.beta, s.k);
                break;
            case LayerType::Conv:
                fast::conv_forward(out, in, params() + L.w_off, params() + L.b_off, L.conv_shape(N));
                break;
            case LayerType::ReLU:
                fast::relu_forward(out, in, B * L.in_size());
                break;
            case LayerType::MaxPool:
                fast::maxpool_forward(out, argmax_[l].data(), in, N, L.inC, L.inH, L.inW, s.kh, s.stride,
                                      L.outH, L.outW);
                break;
            case LayerType::FC:
                fast::fc_forward(out, in, params() + L.w_off, params() + L.b_off, N, int(L.in_size()),
                                 L.outC);
                break;
            case LayerType::Softmax:
                ref::softmax_forward(out, in, N, L.inC);
                break;
        }
        layer_seconds_[2 * l] += omp_get_wtime() - t0;
    }
}

// Softmax cross-entropy on the last activation, then every layer's backward; returns the loss.
float Network::backward(const int32_t* y, const float* w, int64_t B, int64_t* n_correct) {
    const int N = int(B);
    const size_t nl = layers_.size();
    size_t last = nl;  // layers [0, last) are back-propagated through
    float* probs;
    std::vector<float> tmp;
    if (layers_.back().spec.type == LayerType::Softmax) {
        last = nl - 1;
        probs = act_[nl];
    } else {
        tmp.resize(size_t(B) * K_);
        ref::softmax_forward(tmp.data(), act_[nl], N, K_);
        probs = tmp.data();
    }
    int64_t correct = 0;
    for (int n = 0; n < N; n++) {
        const float* p = probs + int64_t(n) * K_;
        correct += (std::max_element(p, p + K_) - p) == y[n];
    }
    if (n_correct) *n_correct = correct;
    int cur = 0;
    float* dout = dbuf_[cur].data();
    const float loss = ref::crossentropy_backward(dout, probs, y, N, K_, w);
    std::memset(grads(), 0, sizeof(float) * size_t(P_));
    for (size_t li = last; li-- > 0;) {
        const double t0 = omp_get_wtime();
        if (seg_end_[li] >= 0) {
            const Segment& sg = segments_[size_t(seg_end_[li])];
            float* din = sg.first == 0 ? nullptr : dbuf_[cur ^ 1].data();
            backward_segment(sg, dout, din, B);
            layer_seconds_[2 * size_t(sg.first) + 1] += omp_get_wtime() - t0;
            if (!din) break;
            li = size_t(sg.first);
            cur ^= 1;
            dout = din;
            continue;
        }
        const Layer& L = layers_[li];
        const LayerSpec& s = L.spec;
        float* din = li == 0 ? nullptr : dbuf_[cur ^ 1].data();  // no gradient for the images
        const int HW = L.inH * L.inW;
        switch (s.type) {
            case LayerType::BatchNorm: {
                const float* mean = stats_[li].data();
                fast::batchnorm_backward(din, grads() + L.w_off, grads() + L.b_off, dout, act_[li], mean,
                                         mean + L.inC, params() + L.w_off, N, L.inC, HW);
                break;
            }
            case LayerType::LRN:
                if (din) fast::lrn_backward(din, dout, act_[li], N, L.inC, HW, s.size, s.alpha, s.beta, s.k);
                break;
            case LayerType::Conv:
                fast::conv_backward(din, grads() + L.w_off, grads() + L.b_off, dout, act_[li],
                                    params() + L.w_off, L.conv_shape(N));
                break;
            case LayerType::ReLU:
                if (din) fast::relu_backward(din, dout, act_[li + 1], B * L.in_size());
                break;
            case LayerType::MaxPool:
                if (din)
                    fast::maxpool_backward(din, dout, argmax_[li].data(), N, L.inC, L.inH, L.inW, L.outH,
                                           L.outW);
                break;
            case LayerType::FC:
                fast::fc_backward(din, grads() + L.w_off, grads() + L.b_off, dout, act_[li],
                                  params() + L.w_off, N, int(L.in_size()), L.outC);
                break;
            case LayerType::Softmax:
                break;  // only last; handled above
        }
        layer_seconds_[2 * li + 1] += omp_get_wtime() - t0;
        if (!din) break;
        cur ^= 1;
        dout = din;
    }
    return loss;
}

void Network::adam_update() {
    // L2 regularization on conv / fc weights (not on their biases: MATLAB's BiasL2Factor 0), and on
    // batch-norm gamma and beta scaled by bn_l2_factor (MATLAB's ScaleL2Factor / OffsetL2Factor)
    auto add_l2 = [&](int64_t off, int64_t n, float l2) {
        float* g = grads() + off;
        const float* p = params() + off;
        for (int64_t i = 0; i < n; i++) g[i] += l2 * p[i];
    };
    if (adam_.l2 != 0.f)
        for (const Layer& L : layers_) {
            if (L.spec.type == LayerType::Conv || L.spec.type == LayerType::FC) add_l2(L.w_off, L.n_w, adam_.l2);
            if (L.spec.type == LayerType::BatchNorm && adam_.bn_l2_factor != 0.f) {
                const float l2_bn = adam_.l2 * adam_.bn_l2_factor;
                add_l2(L.w_off, L.n_w, l2_bn);
                add_l2(L.b_off, L.n_b, l2_bn);
            }
        }
    step_++;
    const float b1 = adam_.beta1, b2 = adam_.beta2;
    const double bc1 = 1.0 - std::pow(double(b1), double(step_));
    const double bc2 = 1.0 - std::pow(double(b2), double(step_));
    const float lr_t = float(adam_.learning_rate * std::sqrt(bc2) / bc1);
    const float eps_t = float(adam_.epsilon * std::sqrt(bc2));
    float* p = params();
    const float* g = grads();
    float* m = adam_m();
    float* v = adam_v();
    const int64_t P = P_;
#pragma omp parallel for schedule(static) if (P >= kParMinWork)
    for (int64_t i = 0; i < P; i++) {
        m[i] = b1 * m[i] + (1.f - b1) * g[i];
        v[i] = b2 * v[i] + (1.f - b2) * g[i] * g[i];
        // p -= lr mhat / (sqrt(vhat) + eps), with the bias corrections folded into lr_t, eps_t
        p[i] -= lr_t * m[i] / (std::sqrt(v[i]) + eps_t);
    }
}

std::pair<float, int64_t> Network::train_step(const ImageBatch& X, const int64_t* idx, const int32_t* y,
                                              int64_t B, const float* w) {
    omp_set_num_threads(n_threads_);
    ensure_buffers(B);
    load_batch(acts_[0].data(), X, idx, B);
    forward(B, true, true);
    int64_t correct = 0;
    const float loss = backward(y, w, B, &correct);
    if (!std::isfinite(loss))
        throw std::runtime_error("training diverged: the loss is not finite (lower learning_rate_init?)");
    adam_update();
    return {loss, correct};
}

float Network::loss_and_grad(const ImageBatch& X, const int64_t* idx, const int32_t* y, int64_t B,
                             const float* w) {
    omp_set_num_threads(n_threads_);
    ensure_buffers(B);
    load_batch(acts_[0].data(), X, idx, B);
    forward(B, true, false);
    return backward(y, w, B, nullptr);
}

void Network::predict_proba(float* out, const ImageBatch& X, const int64_t* idx, int64_t m, int64_t chunk,
                            bool logits) {
    omp_set_num_threads(n_threads_);
    if (fuse_) {  // the fused inference plan, image by image (chunk does not matter)
        if (m <= 0) return;
        prepare_inference();
        const int T = m >= 2 && n_threads_ > 1 ? int(std::min<int64_t>(n_threads_, m)) : 1;
        if (iact_.size() < size_t(T)) {
            check_memory(T);  // T images' training buffers bound T per-image inference buffers
            int64_t amax = 1;
            for (const Layer& L : layers_)
                if (L.spec.type == LayerType::MaxPool) amax = std::max(amax, L.out_size());
            // built aside, so a failed allocation leaves no half-sized buffers behind
            std::vector<std::vector<float>> act(static_cast<size_t>(T));
            std::vector<std::vector<int32_t>> arg(static_cast<size_t>(T));
            for (int t = 0; t < T; t++) {
                act[size_t(t)].resize(checked_count(checked_mul(2, iscratch_, "inference scratch")));
                arg[size_t(t)].resize(checked_count(amax));
            }
            iact_.swap(act);
            iarg_.swap(arg);
        }
        if (T == 1) {
            for (int64_t i = 0; i < m; i++) infer_image(out + i * K_, X, idx ? idx[i] : i, 0, logits);
            return;
        }
        // one image per thread at a time, its kernels on one thread
#pragma omp parallel num_threads(T)
        {
            omp_set_num_threads(1);
            const int t = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
            for (int64_t i = 0; i < m; i++) infer_image(out + i * K_, X, idx ? idx[i] : i, t, logits);
        }
        return;
    }
    chunk = std::max<int64_t>(1, std::min(chunk, m));
    ensure_buffers(chunk);
    std::vector<int64_t> ids(static_cast<size_t>(chunk));
    for (int64_t s = 0; s < m; s += chunk) {
        const int64_t B = std::min(chunk, m - s);
        for (int64_t i = 0; i < B; i++) ids[size_t(i)] = idx ? idx[s + i] : s + i;
        load_batch(acts_[0].data(), X, ids.data(), B);
        forward(B, false, false);
        const bool has_softmax = layers_.back().spec.type == LayerType::Softmax;
        const float* last = act_.back();
        if (logits)  // the input of the final softmax (the stack's own, or the one applied here)
            std::memcpy(out + s * K_, has_softmax ? act_[layers_.size() - 1] : last, sizeof(float) * size_t(B) * K_);
        else if (has_softmax)
            std::memcpy(out + s * K_, last, sizeof(float) * size_t(B) * K_);
        else
            ref::softmax_forward(out + s * K_, last, int(B), K_);
    }
}

}  // namespace ndlm

// ============================================================================================
// Fused inference (predict_proba with fusion on): batch norm folded into the neighbouring
// weights where that is exact up to float rounding, conv -> chain -> max pool in one kernel, and
// every image run through the whole network on its own (its activations stay in cache).
// The per-layer forward with running statistics is the reference (tests/test_fused.py).
// ============================================================================================
namespace ndlm {

// Plan: leading batch norms -> InputBN (pointwise, so exact whatever follows, zero padding too);
// a convolution and the batch norms right after it -> Conv, or ConvPool when a ReLU / batch norm
// chain and a max pool with window == stride follow; batch norms right before a fully connected
// layer -> FC. Everything else runs per layer. A batch norm before a padded convolution is never
// folded into it (its shift would reach the zero padding).
void Network::plan_inference() {
    const int nl = int(layers_.size());
    isteps_.clear();
    istep_start_.assign(size_t(nl), -1);
    iscratch_ = int64_t(C_) * H_ * W_;
    if (!fuse_) return;
    auto type = [&](int l) { return layers_[size_t(l)].spec.type; };
    auto add = [&](const InferStep& st) {
        istep_start_[size_t(st.first)] = int(isteps_.size());
        isteps_.push_back(st);
    };
    int i = 0;
    if (type(0) == LayerType::BatchNorm) {
        int j = 0;
        while (j + 1 < nl && type(j + 1) == LayerType::BatchNorm) j++;
        InferStep st;
        st.kind = InferStep::InputBN;
        st.first = 0;
        st.last = j;
        add(st);
        i = j + 1;
    }
    while (i < nl) {
        const LayerType t = type(i);
        if (t == LayerType::Conv) {
            int j = i;
            while (j + 1 < nl && type(j + 1) == LayerType::BatchNorm) j++;
            int k = j;
            while (k + 1 < nl && (type(k + 1) == LayerType::BatchNorm || type(k + 1) == LayerType::ReLU) &&
                   k + 1 - j <= kMaxSegOps)
                k++;
            InferStep st;
            st.first = i;
            const bool pool = k + 1 < nl && type(k + 1) == LayerType::MaxPool &&
                              layers_[size_t(k + 1)].spec.stride == layers_[size_t(k + 1)].spec.kh;
            if (pool) {
                st.kind = InferStep::ConvPool;
                st.ep_first = j + 1;
                st.last = k + 1;
            } else {
                st.kind = InferStep::Conv;
                st.last = j;
            }
            if (pool || j > i) add(st);
            for (int l = (pool ? st.last : i); l <= st.last; l++)
                iscratch_ = std::max(iscratch_, layers_[size_t(l)].out_size());
            i = (pool || j > i) ? st.last + 1 : i + 1;
            continue;
        }
        if (t == LayerType::BatchNorm) {
            int j = i;
            while (j + 1 < nl && type(j + 1) == LayerType::BatchNorm) j++;
            if (j + 1 < nl && type(j + 1) == LayerType::FC) {
                InferStep st;
                st.kind = InferStep::FC;
                st.first = i;
                st.last = j + 1;
                add(st);
                iscratch_ = std::max(iscratch_, layers_[size_t(j + 1)].out_size());
                i = j + 2;
                continue;
            }
        }
        iscratch_ = std::max(iscratch_, layers_[size_t(i)].out_size());
        i++;
    }
    // folded parameters: per step weights / bias / sign / chain scales
    int64_t off = 0;
    for (InferStep& st : isteps_) {
        const Layer& F = layers_[size_t(st.first)];
        switch (st.kind) {
            case InferStep::InputBN:
                st.w_off = off;
                st.b_off = off + C_;
                off += 2 * C_;
                break;
            case InferStep::Conv:
            case InferStep::ConvPool:
                st.w_off = off;
                off += F.n_w;
                st.b_off = off;
                off += F.outC;
                if (st.kind == InferStep::ConvPool) {
                    st.s_off = off;
                    off += F.outC;
                    st.ep_off = off;
                    off += int64_t(st.last - st.ep_first) * F.outC;
                }
                break;
            case InferStep::FC: {
                const Layer& L = layers_[size_t(st.last)];
                st.w_off = off;
                off += L.n_w;
                st.b_off = off;
                off += L.n_b;
                break;
            }
        }
    }
    fold_.assign(checked_count(off), 0.f);
    fold_key_.clear();
}

// Per channel y = a x + b of the inference batch norms [first, last] (all of C channels), in double
static void bn_affine(const std::vector<Layer>& layers, const float* params, const float* running, int first,
                      int last, std::vector<double>& a, std::vector<double>& b) {
    const int C = layers[size_t(first)].inC;
    a.assign(size_t(C), 1.0);
    b.assign(size_t(C), 0.0);
    for (int l = first; l <= last; l++) {
        const Layer& L = layers[size_t(l)];
        const float* gamma = params + L.w_off;
        const float* beta = params + L.b_off;
        const float* rmean = running + L.run_off;
        const float* rvar = rmean + C;
        for (int c = 0; c < C; c++) {
            const double s = double(gamma[c]) / std::sqrt(double(rvar[c]) + L.spec.eps);
            a[size_t(c)] *= s;
            b[size_t(c)] = s * (b[size_t(c)] - rmean[c]) + beta[c];
        }
    }
}

void Network::prepare_inference() {
    const size_t P = size_t(P_), R = running_.size();
    if (fold_key_.size() == P + R && std::memcmp(fold_key_.data(), params(), sizeof(float) * P) == 0 &&
        std::memcmp(fold_key_.data() + P, running_.data(), sizeof(float) * R) == 0)
        return;
    const float* prm = params();
    const float* run = running_.data();
    std::vector<double> a, b;
    for (const InferStep& st : isteps_) {
        switch (st.kind) {
            case InferStep::InputBN:
                bn_affine(layers_, prm, run, st.first, st.last, a, b);
                for (int c = 0; c < C_; c++) {
                    fold_[size_t(st.w_off + c)] = float(a[size_t(c)]);
                    fold_[size_t(st.b_off + c)] = float(b[size_t(c)]);
                }
                break;
            case InferStep::Conv:
            case InferStep::ConvPool: {
                const Layer& L = layers_[size_t(st.first)];
                const int Co = L.outC;
                const int bn_last = st.kind == InferStep::ConvPool ? st.ep_first - 1 : st.last;
                if (bn_last > st.first) {
                    bn_affine(layers_, prm, run, st.first + 1, bn_last, a, b);
                } else {
                    a.assign(size_t(Co), 1.0);
                    b.assign(size_t(Co), 0.0);
                }
                std::vector<double> sg(size_t(Co), 1.0);
                if (st.kind == InferStep::ConvPool) {
                    // chain scales as the per-layer kernel computes them; the chain's direction
                    // per channel is the product of their signs (ReLU is non-decreasing)
                    int j = 0;
                    for (int l = st.ep_first; l < st.last; l++, j++) {
                        const Layer& E = layers_[size_t(l)];
                        if (E.spec.type != LayerType::BatchNorm) continue;
                        const float* gamma = prm + E.w_off;
                        const float* rvar = run + E.run_off + E.inC;
                        float* sc = fold_.data() + st.ep_off + int64_t(j) * Co;
                        for (int c = 0; c < Co; c++) {
                            sc[c] = gamma[c] / std::sqrt(rvar[c] + E.spec.eps);
                            if (sc[c] < 0.f) sg[size_t(c)] = -sg[size_t(c)];
                        }
                    }
                    for (int c = 0; c < Co; c++) fold_[size_t(st.s_off + c)] = float(sg[size_t(c)]);
                }
                const float* w = prm + L.w_off;
                const float* bias = prm + L.b_off;
                const int64_t per = L.n_w / Co;
                for (int c = 0; c < Co; c++) {
                    const double m = sg[size_t(c)] * a[size_t(c)];
                    for (int64_t q = 0; q < per; q++)
                        fold_[size_t(st.w_off + c * per + q)] = float(m * w[c * per + q]);
                    fold_[size_t(st.b_off + c)] =
                        float(sg[size_t(c)] * (a[size_t(c)] * bias[c] + b[size_t(c)]));
                }
                break;
            }
            case InferStep::FC: {
                const Layer& L = layers_[size_t(st.last)];
                bn_affine(layers_, prm, run, st.first, st.last - 1, a, b);
                const int64_t F = L.in_size(), HW = int64_t(L.inH) * L.inW;
                const float* w = prm + L.w_off;
                const float* bias = prm + L.b_off;
                for (int o = 0; o < L.outC; o++) {
                    double acc = bias[o];
                    for (int64_t f = 0; f < F; f++) {
                        const size_t c = size_t(f / HW);
                        const double wf = w[int64_t(o) * F + f];
                        fold_[size_t(st.w_off + int64_t(o) * F + f)] = float(wf * a[c]);
                        acc += wf * b[c];
                    }
                    fold_[size_t(st.b_off + o)] = float(acc);
                }
                break;
            }
        }
    }
    fold_key_.resize(P + R);
    std::memcpy(fold_key_.data(), params(), sizeof(float) * P);
    std::memcpy(fold_key_.data() + P, running_.data(), sizeof(float) * R);
}

// Class probabilities of image X[src] into out (K_ floats), with thread t's scratch.
void Network::infer_image(float* out, const ImageBatch& X, int64_t src, int t, bool logits) {
    float* cur = iact_[size_t(t)].data();
    float* nxt = cur + iscratch_;
    int32_t* am = iarg_[size_t(t)].data();
    const int nl = int(layers_.size());
    int l = 0;
    if (!isteps_.empty() && isteps_[0].kind == InferStep::InputBN) {
        const InferStep& st = isteps_[0];
        load_image(cur, X, src, fold_.data() + st.w_off, fold_.data() + st.b_off);
        l = st.last + 1;
    } else {
        load_image(cur, X, src, nullptr, nullptr);
    }
    for (; l < nl; l++) {
        const Layer& L = layers_[size_t(l)];
        const LayerSpec& s = L.spec;
        const int HW = L.inH * L.inW;
        if (istep_start_[size_t(l)] >= 0) {
            const InferStep& st = isteps_[size_t(istep_start_[size_t(l)])];
            const float* fw = fold_.data() + st.w_off;
            const float* fb = fold_.data() + st.b_off;
            if (st.kind == InferStep::Conv) {
                fast::conv_forward(nxt, cur, fw, fb, L.conv_shape(1));
            } else if (st.kind == InferStep::ConvPool) {
                SegOp ops[kMaxSegOps];
                int n = 0;
                for (int e = st.ep_first; e < st.last; e++, n++) {
                    const Layer& E = layers_[size_t(e)];
                    ops[n] = SegOp{};
                    if (E.spec.type == LayerType::ReLU) {
                        ops[n].relu = true;
                        continue;
                    }
                    ops[n].mean = running_.data() + E.run_off;
                    ops[n].scale = fold_.data() + st.ep_off + int64_t(n) * L.outC;
                    ops[n].shift = params() + E.b_off;
                }
                const Layer& P = layers_[size_t(st.last)];
                fast::conv_pool_forward(nxt, cur, fw, fb, fold_.data() + st.s_off, L.conv_shape(1), ops, n,
                                        P.spec.kh, P.outH, P.outW);
            } else {  // FC
                const Layer& Fl = layers_[size_t(st.last)];
                fast::fc_forward(nxt, cur, fw, fb, 1, int(Fl.in_size()), Fl.outC);
            }
            std::swap(cur, nxt);
            l = st.last;
            continue;
        }
        switch (s.type) {
            case LayerType::BatchNorm: {
                const float* rmean = running_.data() + L.run_off;
                fast::batchnorm_forward_infer(nxt, cur, params() + L.w_off, params() + L.b_off, rmean,
                                              rmean + L.inC, 1, L.inC, HW, s.eps);
                break;
            }
            case LayerType::LRN:
                fast::lrn_forward(nxt, cur, 1, L.inC, HW, s.size, s.alpha, s.beta, s.k);
                break;
            case LayerType::Conv:
                fast::conv_forward(nxt, cur, params() + L.w_off, params() + L.b_off, L.conv_shape(1));
                break;
            case LayerType::ReLU:
                fast::relu_forward(cur, cur, L.in_size());
                continue;  // in place
            case LayerType::MaxPool:
                fast::maxpool_forward(nxt, am, cur, 1, L.inC, L.inH, L.inW, s.kh, s.stride, L.outH, L.outW);
                break;
            case LayerType::FC:
                fast::fc_forward(nxt, cur, params() + L.w_off, params() + L.b_off, 1, int(L.in_size()),
                                 L.outC);
                break;
            case LayerType::Softmax:
                if (logits)
                    std::memcpy(out, cur, sizeof(float) * size_t(L.inC));
                else
                    ref::softmax_forward(out, cur, 1, L.inC);
                return;
        }
        std::swap(cur, nxt);
    }
    if (logits)
        std::memcpy(out, cur, sizeof(float) * size_t(K_));
    else
        ref::softmax_forward(out, cur, 1, K_);
}

}  // namespace ndlm
