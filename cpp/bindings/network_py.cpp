// The Network class for Python. Compute runs with the GIL released; every method and property that
// reads or writes the network's state holds its lock (lock() below), so a train_step running in
// another thread is never observed half-way. Only the shapes fixed at construction (layers,
// output_shapes, segments, n_params, fused) are read without it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "bindings.h"
#include "checked_size.h"
#include "network.h"
#include "param_layout.h"

namespace ndlm {
namespace py_bindings {
namespace {

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
    int64_t n = 1;
    for (auto s : shape) n = checked_mul(n, s, "array");
    py::array_t<float> a(shape);
    std::memcpy(a.mutable_data(), p, sizeof(float) * checked_count(n));
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

// Takes the network's lock with the GIL released while waiting: a train_step running in another
// thread (without the GIL, holding the lock) then never blocks the other Python threads.
std::unique_lock<std::mutex> lock(Network& n) {
    py::gil_scoped_release nogil;
    return std::unique_lock<std::mutex>(n.mutex());
}

// Parameter arrays of one layer (param_layout.h), as copies. Caller holds the lock.
py::dict layer_params(Network& net, size_t i) {
    py::dict d;
    for (const ParamSlot& p : param_slots(net.layers()[i])) d[p.name.c_str()] = copy_of(p.data(net), p.shape);
    return d;
}

// New values for the named arrays of layer i, checked (known name, size, numbers) and staged:
// nothing is written until every layer's dict has been checked (set_layer_params is all or nothing).
struct Staged {
    float* dst;
    std::vector<float> values;
};
void stage_layer_params(std::vector<Staged>& out, Network& net, size_t i, const py::handle& h) {
    const std::string w = "layer " + std::to_string(i);
    if (!py::isinstance<py::dict>(h)) throw py::value_error(w + ": expected a dict of parameter arrays");
    const std::vector<ParamSlot> slots = param_slots(net.layers()[i]);
    for (auto kv : py::reinterpret_borrow<py::dict>(h)) {
        const std::string k = py::str(kv.first).cast<std::string>();
        const ParamSlot* p = nullptr;
        for (const ParamSlot& s : slots)
            if (s.name == k) p = &s;
        if (!p) throw py::value_error(w + " has no parameter '" + k + "'");
        Staged st{p->data(net), std::vector<float>(size_t(p->size()))};
        copy_into(st.values.data(), kv.second, p->size(), w + " " + k);
        out.push_back(std::move(st));
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

// Optional per-sample weights (None: all 1, the unweighted path): n finite values >= 0.
std::vector<float> weight_values(const py::object& h, int64_t n) {
    if (h.is_none()) return {};
    auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(h);
    if (!a) throw py::value_error("sample weights must be an array of numbers");
    if (a.size() != n) throw py::value_error("one sample weight per image");
    std::vector<float> out(a.data(), a.data() + a.size());
    for (float v : out)
        if (!(std::isfinite(v) && v >= 0.f)) throw py::value_error("sample weights must be finite and >= 0");
    return out;
}

// The images an optional index array selects: all m = b.n of them (ptr() null) or X[idx].
struct Selection {
    std::vector<int64_t> idx;
    int64_t m;
    bool all;
    Selection(const py::object& idx_obj, const ImageBatch& b) : m(b.n), all(idx_obj.is_none()) {
        if (all) return;
        idx = int_values<int64_t>(idx_obj, "image index", b.n);
        m = int64_t(idx.size());
    }
    const int64_t* ptr() const { return all ? nullptr : idx.data(); }
};

}  // namespace

void bind_network(py::module_& m) {
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
            "infer_steps",
            [](const Network& n) {
                static const char* kinds[] = {"input_bn", "conv", "conv_pool", "fc"};
                py::list l;
                for (const InferStep& s : n.infer_steps())
                    l.append(py::make_tuple(kinds[s.kind], s.first, s.last));
                return l;
            },
            "Fused inference plan (predict_proba): (kind, first, last) per step; kind input_bn (batch "
            "norms folded into the image loading), conv (batch norms folded into the convolution), conv_pool "
            "(conv, folded batch norms, ReLU / batch norm chain and max pool in one kernel) or fc "
            "(batch norms "
            "folded into the fully connected layer)")
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
        .def(
            "memory_estimate",
            [](const Network& n, int64_t batch) {
                if (batch < 1) throw py::value_error("batch must be >= 1");
                const Network::MemoryEstimate e = n.memory_estimate(batch);
                return py::make_tuple(e.bytes, e.worst_layer, e.worst_bytes);
            },
            py::arg("batch"),
            "(bytes, worst layer, its bytes): the memory the network is estimated to need for batches of "
            "`batch` images (checked against the machine's memory before buffers are allocated)")
        .def_property(
            "n_threads",
            [](Network& n) {
                auto g = lock(n);
                return n.threads();
            },
            [](Network& n, int t) {
                check_threads(t);
                auto g = lock(n);
                n.set_threads(t);
            })
        .def(
            "set_optimizer",
            [](Network& n, float lr, float b1, float b2, float eps, float l2, float bn_l2_factor) {
                if (!(lr > 0) || !std::isfinite(lr)) throw py::value_error("learning rate must be > 0");
                if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1))
                    throw py::value_error("beta_1, beta_2 must be in [0, 1)");
                if (!(eps > 0)) throw py::value_error("epsilon must be > 0");
                if (!(l2 >= 0) || !std::isfinite(l2)) throw py::value_error("alpha (L2) must be >= 0");
                if (!(bn_l2_factor >= 0) || !std::isfinite(bn_l2_factor))
                    throw py::value_error("batchnorm_l2_factor must be finite and >= 0");
                auto g = lock(n);
                n.set_adam(AdamConfig{lr, b1, b2, eps, l2, bn_l2_factor});
            },
            py::arg("learning_rate"), py::arg("beta_1"), py::arg("beta_2"), py::arg("epsilon"), py::arg("l2"),
            py::arg("bn_l2_factor") = 0.f)
        .def(
            "train_step",
            [](Network& n, const py::array& X, const py::object& idx_obj, const py::object& y_obj,
               const py::object& w_obj) {
                ImageBatch b = image_batch(X, n);
                const std::vector<int64_t> idx = int_values<int64_t>(idx_obj, "image index", b.n);
                const std::vector<int32_t> y = int_values<int32_t>(y_obj, "label", n.n_classes());
                const int64_t B = int64_t(idx.size());
                if (B < 1) throw py::value_error("empty mini-batch");
                if (int64_t(y.size()) != B) throw py::value_error("one label per index");
                const std::vector<float> w = weight_values(w_obj, B);
                std::pair<float, int64_t> r;
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> g(n.mutex());
                    r = n.train_step(b, idx.data(), y.data(), B, w.empty() ? nullptr : w.data());
                }
                return py::make_tuple(r.first, r.second);
            },
            py::arg("X"), py::arg("idx"), py::arg("y"), py::arg("w") = py::none(),
            "One Adam step on the images X[idx] with labels y and optional per-sample weights w; returns "
            "(mean loss, number correct), the loss a weighted mean sum w_i loss_i / sum w_i")
        .def(
            "loss_and_grad",
            [](Network& n, const py::array& X, const py::object& y_obj, const py::object& w_obj) {
                ImageBatch b = image_batch(X, n);
                if (b.n < 1) throw py::value_error("empty batch");
                const std::vector<int32_t> y = int_values<int32_t>(y_obj, "label", n.n_classes());
                if (int64_t(y.size()) != b.n) throw py::value_error("one label per image");
                const std::vector<float> w = weight_values(w_obj, b.n);
                float loss;
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> g(n.mutex());
                    loss = n.loss_and_grad(b, nullptr, y.data(), b.n, w.empty() ? nullptr : w.data());
                }
                return loss;
            },
            py::arg("X"), py::arg("y"), py::arg("w") = py::none(),
            "Mean (weighted with w: sum w_i loss_i / sum w_i) cross-entropy and its gradient (see .grads) with batch statistics; changes no state but "
            ".grads")
        .def(
            "predict_proba",
            [](Network& n, const py::array& X, py::object idx_obj, int64_t chunk, bool logits) {
                ImageBatch b = image_batch(X, n);
                if (chunk < 1) throw py::value_error("chunk must be >= 1");
                const Selection sel(idx_obj, b);
                const int64_t m = sel.m;
                py::array_t<float> out({m, int64_t(n.n_classes())});
                if (m == 0) return out;
                float* o = out.mutable_data();
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> g(n.mutex());
                    n.predict_proba(o, b, sel.ptr(), m, chunk, logits);
                }
                return out;
            },
            py::arg("X"), py::arg("idx") = py::none(), py::arg("chunk") = 64, py::arg("logits") = false,
            "Class probabilities of the images X (or X[idx]) with running batch norm statistics; "
            "logits=True: the input of the final softmax instead")
        .def(
            "population_stats",
            [](Network& n, const py::array& X, py::object idx_obj, int64_t chunk) {
                ImageBatch b = image_batch(X, n);
                if (chunk < 1) throw py::value_error("chunk must be >= 1");
                const Selection sel(idx_obj, b);
                const int64_t m = sel.m;
                if (m < 1) throw py::value_error("population statistics need at least one image");
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> g(n.mutex());
                n.population_stats(b, sel.ptr(), m, chunk);
            },
            py::arg("X"), py::arg("idx") = py::none(), py::arg("chunk") = 64,
            "Set every batch norm layer's running mean / variance to the exact ones of its input over "
            "the images X (or X[idx]), from one training-mode pass (MATLAB's 'population')")
        .def_property(
            "input_norm",
            [](Network& n) {
                auto g = lock(n);
                return py::make_tuple(
                    py::array_t<float>(py::ssize_t(n.input_shift().size()), n.input_shift().data()),
                    py::array_t<float>(py::ssize_t(n.input_mult().size()), n.input_mult().data()));
            },
            [](Network& n, const py::tuple& t) {
                if (t.size() != 2) throw py::value_error("input_norm must be a (shift, mult) pair");
                std::vector<float> shift = t[0].cast<std::vector<float>>(),
                                   mult = t[1].cast<std::vector<float>>();
                auto g = lock(n);
                n.set_input_norm(shift, mult);
            },
            "(shift, mult), flat (H, W, C) float32 arrays: the first layer sees (x * input_scale - shift) * "
            "mult; both empty: no input normalization")
        .def(
            "layer_seconds",
            [](Network& n, bool reset) {
                auto g = lock(n);
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
                 auto g = lock(n);
                 n.release_buffers();
             })
        .def_property_readonly(
            "params",
            [](py::object self) {
                Network& n = self.cast<Network&>();
                auto g = lock(n);
                return view_of(n.params(), n.n_params(), self);
            },
            "All trainable parameters (a writable view; do not write it while train_step runs)")
        .def_property_readonly(
            "grads",
            [](py::object self) {
                Network& n = self.cast<Network&>();
                auto g = lock(n);
                return view_of(n.grads(), n.n_params(), self);
            },
            "Gradients of the last train_step / loss_and_grad (a view)")
        .def(
            "layer_params",
            [](Network& n) {
                auto g = lock(n);
                py::list l;
                for (size_t i = 0; i < n.layers().size(); i++) l.append(layer_params(n, i));
                return l;
            },
            "Per-layer parameter arrays (copies) in PyTorch/ONNX layout")
        .def(
            "set_layer_params",
            [](Network& n, const py::list& l) {
                if (l.size() != n.layers().size()) throw py::value_error("one dict per layer");
                auto g = lock(n);
                std::vector<Staged> staged;
                for (size_t i = 0; i < l.size(); i++) stage_layer_params(staged, n, i, l[i]);
                for (const Staged& s : staged)
                    std::memcpy(s.dst, s.values.data(), sizeof(float) * s.values.size());
            },
            "Sets the named arrays given per layer (dicts as layer_params returns); all or nothing")
        .def(
            "get_state",
            [](Network& n) {
                auto g = lock(n);
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
            auto g = lock(n);
            std::vector<float> tmp(checked_count(checked_add(checked_mul(4, n.n_params(), "state"),
                                                             int64_t(n.running().size()), "state")));  // validate all, then commit
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

}  // namespace py_bindings
}  // namespace ndlm
