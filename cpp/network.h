// A network is a list of layer specs (data, not code) compiled into shapes, one flat parameter
// block and activation buffers; train_step runs forward, softmax cross-entropy, backward and Adam.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "fused.h"
#include "layers.h"

namespace ndlm {

// Largest output height / width and largest number of values per image of any layer: the kernels
// index within an image (and max pooling's argmax within a plane) with int.
constexpr int64_t kMaxExtent = 2147483647;

// The layer types of layer_types.def
enum class LayerType {
#define NDLM_LAYER(Enum, name, keys) Enum,
#include "layer_types.def"
};

struct LayerSpec {
    LayerType type = LayerType::ReLU;
    // batch norm
    float eps = 1e-5f, momentum = 0.1f;
    // LRN
    int size = 5;
    float alpha = 1e-4f, beta = 0.75f, k = 2.f;
    // convolution (filters, kernel, stride, pad) / pooling (kernel, stride)
    int filters = 0, kh = 0, kw = 0, stride = 1, pad = 0;
    // fully connected (0 = number of classes)
    int units = 0;
};

struct Layer {
    LayerSpec spec;
    int inC = 0, inH = 0, inW = 0, outC = 0, outH = 0, outW = 0;
    int64_t w_off = -1, n_w = 0;  // weight (conv, fc) or gamma (batch norm) in the parameter block
    int64_t b_off = -1, n_b = 0;  // bias (conv, fc) or beta (batch norm)
    int64_t run_off = -1;         // batch norm: running mean (C) then running var (C) in running_
    int64_t in_size() const { return int64_t(inC) * inH * inW; }
    int64_t out_size() const { return int64_t(outC) * outH * outW; }
    ConvShape conv_shape(int N) const {
        return ConvShape{N, inC, inH, inW, outC, spec.kh, spec.kw, spec.stride, spec.pad, outH, outW};
    }
};

// An input batch as it arrives from NumPy: (n, H, W, C) images, uint8 or float32, C-contiguous.
struct ImageBatch {
    const void* data = nullptr;
    bool is_uint8 = true;
    int64_t n = 0;
};

struct AdamConfig {
    float learning_rate = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, epsilon = 1e-8f;
    float l2 = 1e-4f;  // added to the gradient of conv / fc weights: g += l2 * w (MATLAB's L2)
    // batch-norm gamma and beta get g += l2 * bn_l2_factor * p (MATLAB's ScaleL2Factor and
    // OffsetL2Factor, 1 there; 0 keeps batch norm unregularized)
    float bn_l2_factor = 0.f;
};

// A fused pointwise segment (planned at construction when fusion is on): layers [first, last]
// are a maximal run of batch norm / ReLU layers, computed by the fast::seg_* kernels (fused.h)
// without materialising their full-resolution outputs; pool >= 0 is a following non-overlapping
// max pool (stride == window) fused in as well. end() is the last layer the segment covers.
struct Segment {
    int first = 0, last = 0, pool = -1;
    int end() const { return pool >= 0 ? pool : last; }
};

// A step of the fused inference path (planned with the segments when fusion is on; used by
// predict_proba): layers [first, last] computed at once with batch norm folded into weights.
//   InputBN:  the batch norms at the very start, applied while loading the images
//   Conv:     a convolution and the batch norms right after it, folded into its weights and bias
//   ConvPool: as Conv, then a ReLU / batch norm chain (ep_first..last-1) and a max pool with
//             window == stride (last), in one kernel (conv_pool_forward): no full-size activation
//   FC:       batch norms right before a fully connected layer (last), folded into its weights
// Folded parameters live in fold_ (offsets below), recomputed when the parameters or running
// statistics differ from the copy they were computed from (fold_key_), never saved.
struct InferStep {
    enum Kind { InputBN, Conv, ConvPool, FC } kind = Conv;
    int first = 0, last = 0;
    int ep_first = -1;                             // ConvPool: first layer of the chain before the pool
    int64_t w_off = -1, b_off = -1, s_off = -1;    // folded weights, bias, sign (ConvPool) in fold_
    int64_t ep_off = -1;                           // ConvPool: per chain batch norm, scale (C) in fold_
};
// The memory a network may use: physical memory (sysconf), or less under a cgroup limit, or the
// environment variable NDLM_SK_MEMORY_LIMIT (bytes) when set.
double memory_limit_bytes();

class Network {
  public:
    // fuse: plan fused pointwise segments (see Segment); the environment variable NDLM_SK_FUSE=0
    // turns fusion off for every network (the per-layer path, the reference). Both paths give
    // the same results: training bit for bit in the forward, within rounding in the gradients;
    // inference (predict_proba, which folds batch norm into weights) within float rounding.
    Network(const std::vector<LayerSpec>& specs, int H, int W, int C, int n_classes, uint64_t seed,
            int n_threads, float input_scale, bool fuse = true);

    // One mini-batch of Adam: images X[idx[i]] with labels y[i] and per-sample weights w[i] (null:
    // all 1). Returns (mean loss, n correct); the loss is the weighted mean sum w_i loss_i / sum w_i.
    std::pair<float, int64_t> train_step(const ImageBatch& X, const int64_t* idx, const int32_t* y,
                                         int64_t B, const float* w = nullptr);
    // Loss and gradient (into grads()) on images X[idx], batch statistics, no update of
    // running statistics or parameters: the function finite-difference checks differentiate.
    float loss_and_grad(const ImageBatch& X, const int64_t* idx, const int32_t* y, int64_t B,
                        const float* w = nullptr);
    // Class probabilities of the m images X[idx[i]] (idx null: the first m) with running
    // statistics (inference), in chunks of `chunk` images; out: (m, n_classes). With fusion on it
    // runs the fused inference plan (InferStep), image by image (in parallel over the images of a
    // chunk when it has at least two and several threads are set), equal to the per-layer path
    // within float rounding; else the per-layer forward.
    // logits: write the input of the final softmax instead of the probabilities
    void predict_proba(float* out, const ImageBatch& X, const int64_t* idx, int64_t m, int64_t chunk,
                       bool logits = false);

    // Input normalization fitted in Python (MATLAB's imageInputLayer 'zerocenter' / 'zscore'):
    // load_batch gives (x * input_scale - shift[e]) * mult[e] for each element e of an (H, W, C)
    // image. Both empty: none (x * input_scale only).
    void set_input_norm(const std::vector<float>& shift, const std::vector<float>& mult);
    const std::vector<float>& input_shift() const { return in_shift_; }
    const std::vector<float>& input_mult() const { return in_mult_; }
    // MATLAB's BatchNormalizationStatistics 'population': one training-mode pass over the m images
    // X[idx[i]] in chunks; each batch norm layer's running mean / variance becomes the exact
    // mean / unbiased variance of its input over all of them (pooled from the per-chunk moments).
    void population_stats(const ImageBatch& X, const int64_t* idx, int64_t m, int64_t chunk);

    // Estimated bytes the network needs to train on (or predict) batches of B images: parameters,
    // gradients and Adam moments, activation and gradient buffers, and the largest kernel scratch
    // (n_threads threads). worst_layer is the layer with the largest share, worst_bytes that share.
    struct MemoryEstimate {
        double bytes = 0, worst_bytes = 0;
        size_t worst_layer = 0;
    };
    MemoryEstimate memory_estimate(int64_t B) const;
    // ValueError (std::invalid_argument) naming the worst layer when memory_estimate(B) exceeds
    // the machine's memory (memory_limit_bytes())
    void check_memory(int64_t B) const;

    // Frees the activation buffers (hundreds of MB for big batches); they come back on demand.
    void release_buffers();
    void set_adam(const AdamConfig& c) { adam_ = c; }
    const AdamConfig& adam() const { return adam_; }
    void set_threads(int n) { n_threads_ = n < 1 ? 1 : n; }
    int threads() const { return n_threads_; }

    const std::vector<Layer>& layers() const { return layers_; }
    int64_t n_params() const { return P_; }
    float* params() { return mem_.data(); }
    float* grads() { return mem_.data() + P_; }
    float* adam_m() { return mem_.data() + 2 * P_; }
    float* adam_v() { return mem_.data() + 3 * P_; }
    std::vector<float>& running() { return running_; }
    int64_t& adam_step() { return step_; }
    int H() const { return H_; }
    int W() const { return W_; }
    int C() const { return C_; }
    int n_classes() const { return K_; }
    std::mutex& mutex() { return mu_; }
    bool fused() const { return fuse_; }
    const std::vector<Segment>& segments() const { return segments_; }
    const std::vector<InferStep>& infer_steps() const { return isteps_; }
    // Seconds spent in each layer since the last reset: [2 l] forward, [2 l + 1] backward.
    // A fused segment's time is attributed to its first layer (the others of the segment get 0).
    std::vector<double>& layer_seconds() { return layer_seconds_; }

  private:
    void ensure_buffers(int64_t B);
    void load_batch(float* dst, const ImageBatch& X, const int64_t* idx, int64_t B) const;
    void forward(int64_t B, bool train, bool update_running);
    float backward(const int32_t* y, const float* w, int64_t B, int64_t* n_correct);
    void adam_update();
    void plan_segments();
    void plan_inference();
    void prepare_inference();  // (re)computes fold_ when the parameters changed
    void load_image(float* d, const ImageBatch& X, int64_t src, const float* bn_a, const float* bn_b) const;
    void infer_image(float* out, const ImageBatch& X, int64_t src, int t, bool logits);
    void update_running(const Layer& L, const float* mean, const float* rstd, int64_t N);
    int seg_ops(const Segment& sg, SegOp* ops, SegShape* sh, int64_t B, bool train);
    void forward_segment(const Segment& sg, int64_t B, bool train, bool update_running);
    void backward_segment(const Segment& sg, const float* dout, float* din, int64_t B);

    std::vector<Layer> layers_;
    int H_, W_, C_, K_;
    int n_threads_;
    float input_scale_;
    std::vector<float> in_shift_, in_mult_;  // (H, W, C) each, or empty (set_input_norm)
    int64_t P_ = 0;                          // number of trainable parameters
    int64_t R_ = 0;                          // number of batch norm running statistics
    std::vector<float> mem_;                 // params | grads | adam m | adam v (one allocation)
    std::vector<float> running_;             // batch norm running statistics
    int64_t step_ = 0;                       // Adam time step
    AdamConfig adam_;
    // activation buffers for the current batch size
    int64_t cap_ = 0;
    std::vector<std::vector<float>> acts_;   // storage: acts_[0] = input, acts_[l + 1] = layer l's output
    std::vector<float*> act_;                // act_[l] = input of layer l (ReLU shares its input's storage)
    std::vector<std::vector<float>> stats_;  // batch norm: mean (C) then rstd (C)
    std::vector<std::vector<int32_t>> argmax_;
    std::vector<float> dbuf_[2];  // activation gradients, ping-pong
    std::vector<double> layer_seconds_;
    bool fuse_ = true;
    std::vector<Segment> segments_;
    std::vector<int> seg_start_;  // per layer: index in segments_ of the segment starting there, or -1
    std::vector<int> seg_end_;    // per layer: index of the segment ending there, or -1
    std::vector<int> in_seg_;     // per layer: index of the segment covering it, or -1
    std::vector<std::vector<float>> seg_aux_;    // fused batch norm: scale, ka, kb, kx (C each)
    std::vector<std::vector<float>> seg_vlast_;  // pooled segment: last batch norm's input at the argmax
    std::vector<InferStep> isteps_;              // fused inference plan (plan_inference)
    std::vector<int> istep_start_;               // per layer: the step starting there, or -1
    std::vector<float> fold_;                    // folded parameters of isteps_
    std::vector<float> fold_key_;                // params | running at the time fold_ was computed
    int64_t iscratch_ = 0;                       // floats of one image's largest activation in the plan
    std::vector<std::vector<float>> iact_;       // per thread: two ping-pong activations of one image
    std::vector<std::vector<int32_t>> iarg_;     // per thread: max pool argmax of one image
    std::mutex mu_;
};

}  // namespace ndlm
