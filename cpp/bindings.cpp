// Python bindings: the private module ndlm_sk._core. Every entry point checks what it is given
// (shapes, dtypes, index ranges) and raises ValueError before touching memory; compute runs with
// the GIL released and the network's mutex held.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>

#include <omp.h>

#include "kernels.h"
#include "layers.h"
#include "network.h"

namespace py = pybind11;
using namespace ndlm;

namespace {

const std::map<std::string, LayerType> kTypes = {
    {"batchnorm", LayerType::BatchNorm}, {"lrn", LayerType::LRN},         {"conv", LayerType::Conv},
    {"relu", LayerType::ReLU},           {"maxpool", LayerType::MaxPool}, {"fc", LayerType::FC},
    {"softmax", LayerType::Softmax}};

const std::map<LayerType, std::set<std::string>> kKeys = {
    {LayerType::BatchNorm, {"eps", "momentum"}},
    {LayerType::LRN, {"size", "alpha", "beta", "k"}},
    {LayerType::Conv, {"filters", "kernel", "stride", "padding"}},
    {LayerType::ReLU, {}},
    {LayerType::MaxPool, {"pool", "stride"}},
    {LayerType::FC, {"units"}},
    {LayerType::Softmax, {}}};

// Layer settings and image sizes above this are refused: no real network needs them, and bounding
// them keeps every shape computation far from int overflow.
constexpr int kMaxDim = 1 << 20;
constexpr int kMaxThreads = 1024;

int check_threads(int n) {
    if (n < 1 || n > kMaxThreads)
        throw py::value_error("n_threads must be between 1 and " + std::to_string(kMaxThreads) + ", got " +
                              std::to_string(n));
    return n;
}

[[noreturn]] void too_big(const std::string& where, const std::string& got) {
    throw py::value_error(where + " must be at most " + std::to_string(kMaxDim) + ", got " + got);
}

int as_int(const py::handle& v, const std::string& where) {
    if (py::isinstance<py::bool_>(v)) throw py::value_error(where + " must be an integer, got a bool");
    const std::string text = py::str(v).cast<std::string>();
    if (py::isinstance<py::float_>(v)) {
        const double d = v.cast<double>();
        if (d != std::floor(d)) throw py::value_error(where + " must be an integer, got " + text);
        if (std::fabs(d) > kMaxDim) too_big(where, text);
        return int(d);
    }
    long long x;
    try {
        x = py::int_(py::reinterpret_borrow<py::object>(v)).cast<long long>();
    } catch (const std::exception&) {
        if (py::isinstance<py::int_>(v)) too_big(where, text);  // beyond 64 bits
        throw py::value_error(where + " must be an integer, got " + py::repr(v).cast<std::string>());
    }
    if (x > kMaxDim || x < -kMaxDim) too_big(where, text);
    return int(x);
}
float as_float(const py::handle& v, const std::string& where) {
    try {
        const double d = py::float_(py::reinterpret_borrow<py::object>(v)).cast<double>();
        if (!std::isfinite(d)) throw std::invalid_argument("");
        return float(d);
    } catch (const std::exception&) {
        throw py::value_error(where + " must be a finite number, got " + py::repr(v).cast<std::string>());
    }
}
std::pair<int, int> as_pair(const py::handle& v, const std::string& where) {
    if (py::isinstance<py::sequence>(v) && !py::isinstance<py::str>(v)) {
        auto s = py::reinterpret_borrow<py::sequence>(v);
        if (s.size() != 2) throw py::value_error(where + " must be an int or a pair of ints");
        return {as_int(s[0], where), as_int(s[1], where)};
    }
    const int k = as_int(v, where);
    return {k, k};
}

LayerSpec parse_spec(const py::handle& h, size_t i) {
    const std::string where = "layer " + std::to_string(i);
    if (!py::isinstance<py::dict>(h))
        throw py::value_error(where + ": a layer spec must be a dict with a 'type' key");
    auto d = py::reinterpret_borrow<py::dict>(h);
    if (!d.contains("type")) throw py::value_error(where + ": missing 'type'");
    const std::string t = py::str(d["type"]).cast<std::string>();
    auto it = kTypes.find(t);
    if (it == kTypes.end())
        throw py::value_error(where + ": unknown layer type '" + t +
                              "' (known: batchnorm, lrn, conv, relu, maxpool, fc, softmax)");
    LayerSpec s;
    s.type = it->second;
    const auto& allowed = kKeys.at(s.type);
    for (auto kv : d) {
        const std::string key = py::str(kv.first).cast<std::string>();
        if (key == "type") continue;
        if (!allowed.count(key)) {
            std::string known;
            for (auto& k : allowed) known += (known.empty() ? "" : ", ") + k;
            throw py::value_error(where + " (" + t + "): unknown setting '" + key + "'" +
                                  (known.empty() ? " (it takes none)" : " (known: " + known + ")"));
        }
    }
    auto get = [&](const char* k) -> py::object {
        return d.contains(k) && !d[k].is_none() ? py::reinterpret_borrow<py::object>(d[k]) : py::object();
    };
    const std::string w = where + " (" + t + ") ";
    switch (s.type) {
        case LayerType::BatchNorm:
            if (auto v = get("eps")) s.eps = as_float(v, w + "eps");
            if (auto v = get("momentum")) s.momentum = as_float(v, w + "momentum");
            break;
        case LayerType::LRN:
            if (auto v = get("size")) s.size = as_int(v, w + "size");
            if (auto v = get("alpha")) s.alpha = as_float(v, w + "alpha");
            if (auto v = get("beta")) s.beta = as_float(v, w + "beta");
            if (auto v = get("k")) s.k = as_float(v, w + "k");
            break;
        case LayerType::Conv: {
            auto f = get("filters");
            auto k = get("kernel");
            if (!f || !k) throw py::value_error(w + "needs 'filters' and 'kernel'");
            s.filters = as_int(f, w + "filters");
            std::tie(s.kh, s.kw) = as_pair(k, w + "kernel");
            if (auto v = get("stride")) s.stride = as_int(v, w + "stride");
            if (auto v = get("padding")) s.pad = as_int(v, w + "padding");
            break;
        }
        case LayerType::MaxPool: {
            auto p = get("pool");
            if (!p) throw py::value_error(w + "needs 'pool'");
            std::tie(s.kh, s.kw) = as_pair(p, w + "pool");
            s.stride = s.kh;
            if (auto v = get("stride")) s.stride = as_int(v, w + "stride");
            break;
        }
        case LayerType::FC:
            if (auto v = get("units")) s.units = as_int(v, w + "units");
            if (s.units < 0) throw py::value_error(w + "units must be >= 1");
            break;
        default:
            break;
    }
    return s;
}

py::dict spec_to_dict(const LayerSpec& s) {
    py::dict d;
    for (auto& kv : kTypes)
        if (kv.second == s.type) d["type"] = kv.first;
    switch (s.type) {
        case LayerType::BatchNorm:
            d["eps"] = s.eps;
            d["momentum"] = s.momentum;
            break;
        case LayerType::LRN:
            d["size"] = s.size;
            d["alpha"] = s.alpha;
            d["beta"] = s.beta;
            d["k"] = s.k;
            break;
        case LayerType::Conv:
            d["filters"] = s.filters;
            d["kernel"] = py::make_tuple(s.kh, s.kw);
            d["stride"] = s.stride;
            d["padding"] = s.pad;
            break;
        case LayerType::MaxPool:
            d["pool"] = s.kh;
            d["stride"] = s.stride;
            break;
        case LayerType::FC:
            d["units"] = s.units;
            break;
        default:
            break;
    }
    return d;
}

// Checks an (n, H, W, C) image array: uint8 or float32, C-contiguous.
ImageBatch image_batch(const py::array& X, const Network& net) {
    ImageBatch b;
    if (X.ndim() != 4)
        throw py::value_error("expected images of shape (n, height, width, channels), got an array with " +
                              std::to_string(X.ndim()) + " dimensions");
    if (X.shape(1) != net.H() || X.shape(2) != net.W() || X.shape(3) != net.C())
        throw py::value_error("images are " + std::to_string(X.shape(1)) + "x" + std::to_string(X.shape(2)) +
                              "x" + std::to_string(X.shape(3)) + " but the network takes " +
                              std::to_string(net.H()) + "x" + std::to_string(net.W()) + "x" +
                              std::to_string(net.C()));
    if (!(X.flags() & py::array::c_style)) throw py::value_error("images must be C-contiguous");
    if (py::isinstance<py::array_t<uint8_t>>(X))
        b.is_uint8 = true;
    else if (py::isinstance<py::array_t<float>>(X))
        b.is_uint8 = false;
    else
        throw py::value_error("images must be uint8 or float32, got " +
                              py::str(X.dtype()).cast<std::string>());
    b.data = X.data();
    b.n = X.shape(0);
    return b;
}

template <typename T>
py::array_t<T> view_of(T* p, int64_t n, py::handle owner) {
    return py::array_t<T>({n}, {int64_t(sizeof(T))}, p, owner);
}

py::array_t<float> copy_of(const float* p, std::vector<int64_t> shape) {
    py::array_t<float> a(shape);
    int64_t n = 1;
    for (auto s : shape) n *= s;
    std::memcpy(a.mutable_data(), p, sizeof(float) * size_t(n));
    return a;
}

void copy_into(float* dst, const py::handle& src, int64_t n, const std::string& what) {
    auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(src);
    if (!a) throw py::value_error(what + ": not an array of numbers");
    if (a.size() != n)
        throw py::value_error(what + ": expected " + std::to_string(n) + " values, got " +
                              std::to_string(a.size()));
    std::memcpy(dst, a.data(), sizeof(float) * size_t(n));
}

// Parameter arrays of one layer in PyTorch / ONNX layout (conv (O, I, KH, KW), fc (O, F) with F in
// C, H, W order), as copies.
py::dict layer_params(Network& net, size_t i) {
    const Layer& L = net.layers()[i];
    py::dict d;
    switch (L.spec.type) {
        case LayerType::BatchNorm:
            d["gamma"] = copy_of(net.params() + L.w_off, {L.inC});
            d["beta"] = copy_of(net.params() + L.b_off, {L.inC});
            d["running_mean"] = copy_of(net.running().data() + L.run_off, {L.inC});
            d["running_var"] = copy_of(net.running().data() + L.run_off + L.inC, {L.inC});
            break;
        case LayerType::Conv:
            d["weight"] = copy_of(net.params() + L.w_off, {L.outC, L.inC, L.spec.kh, L.spec.kw});
            d["bias"] = copy_of(net.params() + L.b_off, {L.outC});
            break;
        case LayerType::FC:
            d["weight"] = copy_of(net.params() + L.w_off, {L.outC, L.in_size()});
            d["bias"] = copy_of(net.params() + L.b_off, {L.outC});
            break;
        default:
            break;
    }
    return d;
}

void set_layer_params(Network& net, size_t i, const py::dict& d) {
    const Layer& L = net.layers()[i];
    const std::string w = "layer " + std::to_string(i);
    for (auto kv : d) {
        const std::string k = py::str(kv.first).cast<std::string>();
        float* dst = nullptr;
        int64_t n = 0;
        if (L.spec.type == LayerType::BatchNorm) {
            if (k == "gamma") {
                dst = net.params() + L.w_off;
                n = L.inC;
            } else if (k == "beta") {
                dst = net.params() + L.b_off;
                n = L.inC;
            } else if (k == "running_mean") {
                dst = net.running().data() + L.run_off;
                n = L.inC;
            } else if (k == "running_var") {
                dst = net.running().data() + L.run_off + L.inC;
                n = L.inC;
            }
        } else if (L.spec.type == LayerType::Conv || L.spec.type == LayerType::FC) {
            if (k == "weight") {
                dst = net.params() + L.w_off;
                n = L.n_w;
            } else if (k == "bias") {
                dst = net.params() + L.b_off;
                n = L.n_b;
            }
        }
        if (!dst) throw py::value_error(w + " has no parameter '" + k + "'");
        copy_into(dst, kv.second, n, w + " " + k);
    }
}

// Indices or labels: an array of any integer dtype, each value checked against [0, limit) before
// it is narrowed, so nothing wraps around or is truncated on the way to C++.
template <typename T>
std::vector<T> int_values(const py::handle& h, const char* what, int64_t limit) {
    py::array a = py::array::ensure(h);
    if (!a) throw py::value_error(std::string(what) + " must be an array of integers");
    const char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u')
        throw py::value_error(std::string(what) + " must be integers, got dtype " +
                              py::str(a.dtype()).cast<std::string>());
    auto c = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    std::vector<T> out(size_t(c.size()));
    for (int64_t i = 0; i < c.size(); i++) {
        const int64_t v = c.data()[i];
        if (v < 0 || v >= limit)  // uint64 beyond int64 wraps negative here: caught too
            throw py::value_error(std::string(what) + " out of range: " + std::to_string(v) + " not in [0, " +
                                  std::to_string(limit) + ")");
        out[size_t(i)] = T(v);
    }
    return out;
}

// ---- kernel entry points for the tests: impl = "ref" or "fast" ------------------------------
using FArr = py::array_t<float, py::array::c_style | py::array::forcecast>;
bool use_fast(const std::string& impl) {
    if (impl == "fast") return true;
    if (impl == "ref") return false;
    throw py::value_error("impl must be 'ref' or 'fast'");
}
void need_ndim(const FArr& a, int nd, const char* what) {
    if (a.ndim() != nd)
        throw py::value_error(std::string(what) + " must have " + std::to_string(nd) + " dimensions");
}

void bind_kernels(py::module_& k) {
    k.def(
        "batchnorm_forward_train",
        [](FArr x, FArr gamma, FArr beta, float eps, const std::string& impl) {
            need_ndim(x, 4, "x");
            const int N = int(x.shape(0)), C = int(x.shape(1)), HW = int(x.shape(2) * x.shape(3));
            if (gamma.size() != C || beta.size() != C) throw py::value_error("gamma/beta must have C values");
            FArr y({x.shape(0), x.shape(1), x.shape(2), x.shape(3)}), mean({C}), rstd({C});
            (use_fast(impl) ? fast::batchnorm_forward_train : ref::batchnorm_forward_train)(
                y.mutable_data(), mean.mutable_data(), rstd.mutable_data(), x.data(), gamma.data(),
                beta.data(), N, C, HW, eps);
            return py::make_tuple(y, mean, rstd);
        },
        py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("eps") = 1e-5f, py::arg("impl") = "fast");
    k.def(
        "batchnorm_forward_infer",
        [](FArr x, FArr gamma, FArr beta, FArr rm, FArr rv, float eps, const std::string& impl) {
            need_ndim(x, 4, "x");
            const int N = int(x.shape(0)), C = int(x.shape(1)), HW = int(x.shape(2) * x.shape(3));
            if (gamma.size() != C || beta.size() != C || rm.size() != C || rv.size() != C)
                throw py::value_error("per-channel arrays must have C values");
            FArr y({x.shape(0), x.shape(1), x.shape(2), x.shape(3)});
            (use_fast(impl) ? fast::batchnorm_forward_infer : ref::batchnorm_forward_infer)(
                y.mutable_data(), x.data(), gamma.data(), beta.data(), rm.data(), rv.data(), N, C, HW, eps);
            return y;
        },
        py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"), py::arg("running_var"),
        py::arg("eps") = 1e-5f, py::arg("impl") = "fast");
    k.def(
        "batchnorm_backward",
        [](FArr dy, FArr x, FArr mean, FArr rstd, FArr gamma, const std::string& impl) {
            need_ndim(x, 4, "x");
            const int N = int(x.shape(0)), C = int(x.shape(1)), HW = int(x.shape(2) * x.shape(3));
            if (dy.size() != x.size()) throw py::value_error("dy and x differ in size");
            if (mean.size() != C || rstd.size() != C || gamma.size() != C)
                throw py::value_error("per-channel arrays must have C values");
            FArr dx({x.shape(0), x.shape(1), x.shape(2), x.shape(3)}), dg({C}), db({C});
            std::fill_n(dg.mutable_data(), C, 0.f);
            std::fill_n(db.mutable_data(), C, 0.f);
            (use_fast(impl) ? fast::batchnorm_backward : ref::batchnorm_backward)(
                dx.mutable_data(), dg.mutable_data(), db.mutable_data(), dy.data(), x.data(), mean.data(),
                rstd.data(), gamma.data(), N, C, HW);
            return py::make_tuple(dx, dg, db);
        },
        py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("rstd"), py::arg("gamma"),
        py::arg("impl") = "fast");
    k.def(
        "lrn_forward",
        [](FArr x, int size, float alpha, float beta, float kk, const std::string& impl) {
            need_ndim(x, 4, "x");
            if (size < 1 || size % 2 == 0) throw py::value_error("size must be odd");
            FArr y({x.shape(0), x.shape(1), x.shape(2), x.shape(3)});
            (use_fast(impl) ? fast::lrn_forward : ref::lrn_forward)(
                y.mutable_data(), x.data(), int(x.shape(0)), int(x.shape(1)), int(x.shape(2) * x.shape(3)),
                size, alpha, beta, kk);
            return y;
        },
        py::arg("x"), py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"),
        py::arg("impl") = "fast");
    k.def(
        "lrn_backward",
        [](FArr dy, FArr x, int size, float alpha, float beta, float kk, const std::string& impl) {
            need_ndim(x, 4, "x");
            if (size < 1 || size % 2 == 0) throw py::value_error("size must be odd");
            if (dy.size() != x.size()) throw py::value_error("dy and x differ in size");
            FArr dx({x.shape(0), x.shape(1), x.shape(2), x.shape(3)});
            (use_fast(impl) ? fast::lrn_backward : ref::lrn_backward)(
                dx.mutable_data(), dy.data(), x.data(), int(x.shape(0)), int(x.shape(1)),
                int(x.shape(2) * x.shape(3)), size, alpha, beta, kk);
            return dx;
        },
        py::arg("dy"), py::arg("x"), py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"),
        py::arg("impl") = "fast");
    auto conv_shape = [](const FArr& x, const FArr& w, int stride, int pad) {
        need_ndim(x, 4, "x");
        need_ndim(w, 4, "w");
        if (w.shape(1) != x.shape(1)) throw py::value_error("w and x disagree on input channels");
        if (stride < 1 || pad < 0) throw py::value_error("bad stride/padding");
        ConvShape s{int(x.shape(0)),
                    int(x.shape(1)),
                    int(x.shape(2)),
                    int(x.shape(3)),
                    int(w.shape(0)),
                    int(w.shape(2)),
                    int(w.shape(3)),
                    stride,
                    pad,
                    0,
                    0};
        if (s.H + 2 * pad < s.KH || s.W + 2 * pad < s.KW) throw py::value_error("kernel larger than input");
        s.OH = (s.H + 2 * pad - s.KH) / stride + 1;
        s.OW = (s.W + 2 * pad - s.KW) / stride + 1;
        return s;
    };
    k.def(
        "conv_forward",
        [conv_shape](FArr x, FArr w, FArr b, int stride, int pad, const std::string& impl) {
            ConvShape s = conv_shape(x, w, stride, pad);
            if (b.size() != s.Cout) throw py::value_error("b must have Cout values");
            FArr y({s.N, s.Cout, s.OH, s.OW});
            (use_fast(impl) ? fast::conv_forward : ref::conv_forward)(y.mutable_data(), x.data(), w.data(),
                                                                      b.data(), s);
            return y;
        },
        py::arg("x"), py::arg("w"), py::arg("b"), py::arg("stride") = 1, py::arg("padding") = 0,
        py::arg("impl") = "fast");
    k.def(
        "conv_backward",
        [conv_shape](FArr dy, FArr x, FArr w, int stride, int pad, const std::string& impl) {
            ConvShape s = conv_shape(x, w, stride, pad);
            if (dy.size() != int64_t(s.N) * s.Cout * s.OH * s.OW)
                throw py::value_error("dy has the wrong size");
            FArr dx({s.N, s.Cin, s.H, s.W}), dw({s.Cout, s.Cin, s.KH, s.KW}), db({s.Cout});
            std::fill_n(dw.mutable_data(), dw.size(), 0.f);
            std::fill_n(db.mutable_data(), db.size(), 0.f);
            (use_fast(impl) ? fast::conv_backward : ref::conv_backward)(
                dx.mutable_data(), dw.mutable_data(), db.mutable_data(), dy.data(), x.data(), w.data(), s);
            return py::make_tuple(dx, dw, db);
        },
        py::arg("dy"), py::arg("x"), py::arg("w"), py::arg("stride") = 1, py::arg("padding") = 0,
        py::arg("impl") = "fast");
    k.def(
        "relu_forward",
        [](FArr x, const std::string& impl) {
            FArr y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
            (use_fast(impl) ? fast::relu_forward : ref::relu_forward)(y.mutable_data(), x.data(), x.size());
            return y;
        },
        py::arg("x"), py::arg("impl") = "fast");
    k.def(
        "relu_backward",
        [](FArr dy, FArr y, const std::string& impl) {
            if (dy.size() != y.size()) throw py::value_error("dy and y differ in size");
            FArr dx(std::vector<py::ssize_t>(y.shape(), y.shape() + y.ndim()));
            (use_fast(impl) ? fast::relu_backward : ref::relu_backward)(dx.mutable_data(), dy.data(),
                                                                        y.data(), y.size());
            return dx;
        },
        py::arg("dy"), py::arg("y"), py::arg("impl") = "fast");
    k.def(
        "maxpool_forward",
        [](FArr x, int K, int S, const std::string& impl) {
            need_ndim(x, 4, "x");
            const int N = int(x.shape(0)), C = int(x.shape(1)), H = int(x.shape(2)), W = int(x.shape(3));
            if (K < 1 || S < 1 || K > H || K > W) throw py::value_error("bad pool window");
            const int OH = (H - K) / S + 1, OW = (W - K) / S + 1;
            FArr y({N, C, OH, OW});
            py::array_t<int32_t> am({N, C, OH, OW});
            (use_fast(impl) ? fast::maxpool_forward : ref::maxpool_forward)(
                y.mutable_data(), am.mutable_data(), x.data(), N, C, H, W, K, S, OH, OW);
            return py::make_tuple(y, am);
        },
        py::arg("x"), py::arg("pool"), py::arg("stride"), py::arg("impl") = "fast");
    k.def(
        "maxpool_backward",
        [](FArr dy, py::array_t<int32_t, py::array::c_style | py::array::forcecast> am, int H, int W,
           const std::string& impl) {
            need_ndim(dy, 4, "dy");
            const int N = int(dy.shape(0)), C = int(dy.shape(1)), OH = int(dy.shape(2)),
                      OW = int(dy.shape(3));
            if (am.size() != dy.size()) throw py::value_error("argmax and dy differ in size");
            for (int64_t i = 0; i < am.size(); i++)
                if (am.data()[i] < 0 || am.data()[i] >= H * W) throw py::value_error("argmax out of range");
            FArr dx({N, C, H, W});
            (use_fast(impl) ? fast::maxpool_backward : ref::maxpool_backward)(dx.mutable_data(), dy.data(),
                                                                              am.data(), N, C, H, W, OH, OW);
            return dx;
        },
        py::arg("dy"), py::arg("argmax"), py::arg("H"), py::arg("W"), py::arg("impl") = "fast");
    k.def(
        "fc_forward",
        [](FArr x, FArr w, FArr b, const std::string& impl) {
            need_ndim(x, 2, "x");
            need_ndim(w, 2, "w");
            if (w.shape(1) != x.shape(1) || b.size() != w.shape(0)) throw py::value_error("shapes disagree");
            FArr y({x.shape(0), w.shape(0)});
            (use_fast(impl) ? fast::fc_forward : ref::fc_forward)(y.mutable_data(), x.data(), w.data(),
                                                                  b.data(), int(x.shape(0)), int(x.shape(1)),
                                                                  int(w.shape(0)));
            return y;
        },
        py::arg("x"), py::arg("w"), py::arg("b"), py::arg("impl") = "fast");
    k.def(
        "fc_backward",
        [](FArr dy, FArr x, FArr w, const std::string& impl) {
            need_ndim(x, 2, "x");
            need_ndim(w, 2, "w");
            if (w.shape(1) != x.shape(1) || dy.size() != x.shape(0) * w.shape(0))
                throw py::value_error("shapes disagree");
            FArr dx({x.shape(0), x.shape(1)}), dw({w.shape(0), w.shape(1)}), db({w.shape(0)});
            std::fill_n(dw.mutable_data(), dw.size(), 0.f);
            std::fill_n(db.mutable_data(), db.size(), 0.f);
            (use_fast(impl) ? fast::fc_backward : ref::fc_backward)(
                dx.mutable_data(), dw.mutable_data(), db.mutable_data(), dy.data(), x.data(), w.data(),
                int(x.shape(0)), int(x.shape(1)), int(w.shape(0)));
            return py::make_tuple(dx, dw, db);
        },
        py::arg("dy"), py::arg("x"), py::arg("w"), py::arg("impl") = "fast");
    k.def(
        "softmax_crossentropy",
        [](FArr logits, py::array_t<int32_t, py::array::c_style | py::array::forcecast> y) {
            need_ndim(logits, 2, "logits");
            const int N = int(logits.shape(0)), K = int(logits.shape(1));
            if (y.size() != N) throw py::value_error("one label per row");
            for (int i = 0; i < N; i++)
                if (y.data()[i] < 0 || y.data()[i] >= K) throw py::value_error("label out of range");
            FArr p({N, K}), d({N, K});
            ref::softmax_forward(p.mutable_data(), logits.data(), N, K);
            const float loss = ref::crossentropy_backward(d.mutable_data(), p.data(), y.data(), N, K);
            return py::make_tuple(loss, p, d);
        },
        py::arg("logits"), py::arg("y"));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "NDLM core: layers, network and Adam in C++ (private; use ndlm_sk.NDLMClassifier)";
    m.def("simd_level", &fast::simd_level, "Instruction set picked at run time for the tuned kernels");
    m.def(
        "max_threads", []() { return omp_get_max_threads(); },
        "OpenMP's default thread count (OMP_NUM_THREADS)");
    py::module_ k =
        m.def_submodule("kernels", "Single layers, tuned ('fast') or reference ('ref'), for tests");
    bind_kernels(k);

    py::class_<Network>(m, "Network")
        .def(py::init([](const py::list& layers, const std::vector<int>& input_shape, int n_classes,
                         uint64_t seed, int n_threads, float input_scale, bool fuse) {
                 if (input_shape.size() != 3)
                     throw py::value_error("input_shape must be (height, width, channels)");
                 for (int d : input_shape)
                     if (d < 1 || d > kMaxDim)
                         throw py::value_error("image height, width and channels must be between 1 and " +
                                               std::to_string(kMaxDim) + ", got " + std::to_string(d));
                 if (int64_t(input_shape[0]) * input_shape[1] >= (int64_t(1) << 31))
                     throw py::value_error("images of more than 2**31 pixels are not supported");
                 check_threads(n_threads);
                 std::vector<LayerSpec> specs;
                 for (size_t i = 0; i < layers.size(); i++) specs.push_back(parse_spec(layers[i], i));
                 return new Network(specs, input_shape[0], input_shape[1], input_shape[2], n_classes, seed,
                                    n_threads, input_scale, fuse);
             }),
             py::arg("layers"), py::arg("input_shape"), py::arg("n_classes"), py::arg("seed") = 0,
             py::arg("n_threads") = 1, py::arg("input_scale") = 1.0f, py::kw_only(), py::arg("fuse") = true)
        .def_property_readonly("fused", &Network::fused,
                               "Whether pointwise segments are fused (fuse=True and NDLM_SK_FUSE is not 0)")
        .def_property_readonly(
            "segments",
            [](const Network& n) {
                py::list l;
                for (const Segment& s : n.segments())
                    l.append(
                        py::make_tuple(s.first, s.last,
                                       s.pool >= 0 ? py::object(py::int_(s.pool)) : py::object(py::none())));
                return l;
            },
            "Fused segments: (first, last, pool) layer indices; pool None when no pool is fused")
        .def_property_readonly(
            "layers",
            [](const Network& n) {
                py::list l;
                for (auto& L : n.layers()) l.append(spec_to_dict(L.spec));
                return l;
            },
            "Canonical layer specs, every setting filled in")
        .def_property_readonly(
            "output_shapes",
            [](const Network& n) {
                py::list l;
                for (auto& L : n.layers()) l.append(py::make_tuple(L.outC, L.outH, L.outW));
                return l;
            },
            "(channels, height, width) after each layer")
        .def_property_readonly("n_params", &Network::n_params)
        .def_property("n_threads", &Network::threads,
                      [](Network& n, int t) { n.set_threads(check_threads(t)); })
        .def(
            "set_optimizer",
            [](Network& n, float lr, float b1, float b2, float eps, float l2) {
                if (!(lr > 0) || !std::isfinite(lr)) throw py::value_error("learning rate must be > 0");
                if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1))
                    throw py::value_error("beta_1, beta_2 must be in [0, 1)");
                if (!(eps > 0)) throw py::value_error("epsilon must be > 0");
                if (!(l2 >= 0) || !std::isfinite(l2)) throw py::value_error("alpha (L2) must be >= 0");
                std::lock_guard<std::mutex> g(n.mutex());
                n.set_adam(AdamConfig{lr, b1, b2, eps, l2});
            },
            py::arg("learning_rate"), py::arg("beta_1"), py::arg("beta_2"), py::arg("epsilon"), py::arg("l2"))
        .def(
            "train_step",
            [](Network& n, const py::array& X, const py::object& idx_obj, const py::object& y_obj) {
                ImageBatch b = image_batch(X, n);
                const std::vector<int64_t> idx = int_values<int64_t>(idx_obj, "image index", b.n);
                const std::vector<int32_t> y = int_values<int32_t>(y_obj, "label", n.n_classes());
                const int64_t B = int64_t(idx.size());
                if (B < 1) throw py::value_error("empty mini-batch");
                if (int64_t(y.size()) != B) throw py::value_error("one label per index");
                std::pair<float, int64_t> r;
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> g(n.mutex());
                    r = n.train_step(b, idx.data(), y.data(), B);
                }
                return py::make_tuple(r.first, r.second);
            },
            py::arg("X"), py::arg("idx"), py::arg("y"),
            "One Adam step on the images X[idx] with labels y; returns (mean loss, number correct)")
        .def(
            "loss_and_grad",
            [](Network& n, const py::array& X, const py::object& y_obj) {
                ImageBatch b = image_batch(X, n);
                if (b.n < 1) throw py::value_error("empty batch");
                const std::vector<int32_t> y = int_values<int32_t>(y_obj, "label", n.n_classes());
                if (int64_t(y.size()) != b.n) throw py::value_error("one label per image");
                float loss;
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> g(n.mutex());
                    loss = n.loss_and_grad(b, nullptr, y.data(), b.n);
                }
                return loss;
            },
            py::arg("X"), py::arg("y"),
            "Mean cross-entropy and its gradient (see .grads) with batch statistics; changes no state but "
            ".grads")
        .def(
            "predict_proba",
            [](Network& n, const py::array& X, py::object idx_obj, int64_t chunk) {
                ImageBatch b = image_batch(X, n);
                if (chunk < 1) throw py::value_error("chunk must be >= 1");
                std::vector<int64_t> idx;
                int64_t m = b.n;
                if (!idx_obj.is_none()) {
                    idx = int_values<int64_t>(idx_obj, "image index", b.n);
                    m = int64_t(idx.size());
                }
                py::array_t<float> out({m, int64_t(n.n_classes())});
                if (m == 0) return out;
                float* o = out.mutable_data();
                const int64_t* ip = idx_obj.is_none() ? nullptr : idx.data();
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> g(n.mutex());
                    n.predict_proba(o, b, ip, m, chunk);
                }
                return out;
            },
            py::arg("X"), py::arg("idx") = py::none(), py::arg("chunk") = 64,
            "Class probabilities of the images X (or X[idx]) with running batch norm statistics")
        .def(
            "population_stats",
            [](Network& n, const py::array& X, py::object idx_obj, int64_t chunk) {
                ImageBatch b = image_batch(X, n);
                if (chunk < 1) throw py::value_error("chunk must be >= 1");
                std::vector<int64_t> idx;
                int64_t m = b.n;
                if (!idx_obj.is_none()) {
                    idx = int_values<int64_t>(idx_obj, "image index", b.n);
                    m = int64_t(idx.size());
                }
                if (m < 1) throw py::value_error("population statistics need at least one image");
                const int64_t* ip = idx_obj.is_none() ? nullptr : idx.data();
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> g(n.mutex());
                n.population_stats(b, ip, m, chunk);
            },
            py::arg("X"), py::arg("idx") = py::none(), py::arg("chunk") = 64,
            "Set every batch norm layer's running mean / variance to the exact ones of its input over "
            "the images X (or X[idx]), from one training-mode pass (MATLAB's 'population')")
        .def_property(
            "input_norm",
            [](const Network& n) {
                return py::make_tuple(
                    py::array_t<float>(py::ssize_t(n.input_shift().size()), n.input_shift().data()),
                    py::array_t<float>(py::ssize_t(n.input_mult().size()), n.input_mult().data()));
            },
            [](Network& n, const py::tuple& t) {
                if (t.size() != 2) throw py::value_error("input_norm must be a (shift, mult) pair");
                std::lock_guard<std::mutex> g(n.mutex());
                n.set_input_norm(t[0].cast<std::vector<float>>(), t[1].cast<std::vector<float>>());
            },
            "(shift, mult), flat (H, W, C) float32 arrays: the first layer sees (x * input_scale - shift) * "
            "mult; both empty: no input normalization")
        .def(
            "layer_seconds",
            [](Network& n, bool reset) {
                std::lock_guard<std::mutex> g(n.mutex());
                auto& t = n.layer_seconds();
                py::list l;
                for (size_t i = 0; i + 1 < t.size(); i += 2) l.append(py::make_tuple(t[i], t[i + 1]));
                if (reset) std::fill(t.begin(), t.end(), 0.0);
                return l;
            },
            py::arg("reset") = false,
            "Per-layer (forward, backward) seconds accumulated so far; a fused segment's time is "
            "attributed to its first layer (the other layers of the segment show 0)")
        .def("release_buffers",
             [](Network& n) {
                 std::lock_guard<std::mutex> g(n.mutex());
                 n.release_buffers();
             })
        .def_property_readonly(
            "params",
            [](py::object self) {
                Network& n = self.cast<Network&>();
                return view_of(n.params(), n.n_params(), self);
            },
            "All trainable parameters (a writable view)")
        .def_property_readonly(
            "grads",
            [](py::object self) {
                Network& n = self.cast<Network&>();
                return view_of(n.grads(), n.n_params(), self);
            },
            "Gradients of the last train_step / loss_and_grad (a view)")
        .def(
            "layer_params",
            [](Network& n) {
                py::list l;
                for (size_t i = 0; i < n.layers().size(); i++) l.append(layer_params(n, i));
                return l;
            },
            "Per-layer parameter arrays (copies) in PyTorch/ONNX layout")
        .def("set_layer_params",
             [](Network& n, const py::list& l) {
                 if (l.size() != n.layers().size()) throw py::value_error("one dict per layer");
                 for (size_t i = 0; i < l.size(); i++) set_layer_params(n, i, l[i].cast<py::dict>());
             })
        .def(
            "get_state",
            [](Network& n) {
                std::lock_guard<std::mutex> g(n.mutex());
                py::dict d;
                const int64_t P = n.n_params();
                d["params"] = copy_of(n.params(), {P});
                d["adam_m"] = copy_of(n.adam_m(), {P});
                d["adam_v"] = copy_of(n.adam_v(), {P});
                d["running"] = copy_of(n.running().data(), {int64_t(n.running().size())});
                d["adam_step"] = n.adam_step();
                return d;
            },
            "Everything learned: parameters, Adam moments and step, batch norm running statistics")
        .def("set_state", [](Network& n, const py::dict& d) {
            for (const char* k : {"params", "adam_m", "adam_v", "running", "adam_step"})
                if (!d.contains(k)) throw py::value_error(std::string("state lacks '") + k + "'");
            py::object step_obj = d["adam_step"];
            if (py::isinstance<py::bool_>(step_obj) ||
                !(py::isinstance<py::int_>(step_obj) || py::hasattr(step_obj, "__index__")))
                throw py::value_error("adam_step must be an integer, got " +
                                      py::repr(step_obj).cast<std::string>());
            const int64_t step = py::int_(step_obj).cast<int64_t>();
            if (step < 0) throw py::value_error("adam_step must be >= 0");
            std::lock_guard<std::mutex> g(n.mutex());
            std::vector<float> tmp(size_t(4 * n.n_params()) +
                                   n.running().size());  // validate all, then commit
            const int64_t P = n.n_params();
            copy_into(tmp.data(), d["params"], P, "params");
            copy_into(tmp.data() + P, d["adam_m"], P, "adam_m");
            copy_into(tmp.data() + 2 * P, d["adam_v"], P, "adam_v");
            copy_into(tmp.data() + 4 * P, d["running"], int64_t(n.running().size()), "running");
            const char* names[] = {"params", "adam_m", "adam_v", "(unused)", "running"};
            for (size_t i = 0; i < tmp.size(); i++)
                if (!std::isfinite(tmp[i]))
                    throw py::value_error(std::string(names[std::min<size_t>(i / size_t(P), 4)]) +
                                          " contain NaN or inf");
            std::memcpy(n.params(), tmp.data(), sizeof(float) * size_t(P));
            std::memcpy(n.adam_m(), tmp.data() + P, sizeof(float) * size_t(2 * P));
            std::memcpy(n.running().data(), tmp.data() + 4 * P, sizeof(float) * n.running().size());
            n.adam_step() = step;
        });
}
