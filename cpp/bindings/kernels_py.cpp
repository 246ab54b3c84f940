// Test-only bindings (_core.kernels): each layer kernel alone, tuned ("fast") or reference ("ref"),
// on NumPy arrays, so tests can compare the two and check backward passes by finite differences.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bindings.h"
#include "checked_size.h"
#include "kernels.h"
#include "layers.h"

namespace ndlm {
namespace py_bindings {
namespace {

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
    // the kernels take int dimensions, planes (H * W) and rows (C * H * W)
    for (int i = 0; i < nd; i++)
        if (a.shape(i) > 2147483647) throw py::value_error(std::string(what) + ": dimension too large");
    if (nd == 4 && (checked_mul(a.shape(2), a.shape(3)) > 2147483647 ||
                    checked_prod({a.shape(1), a.shape(2), a.shape(3)}) > 2147483647))
        throw py::value_error(std::string(what) + ": image too large");
    if (nd == 2 && a.shape(1) > 2147483647) throw py::value_error(std::string(what) + ": rows too long");
}

}  // namespace

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
        if (int64_t(s.H) + 2 * int64_t(pad) < s.KH || int64_t(s.W) + 2 * int64_t(pad) < s.KW)
            throw py::value_error("kernel larger than input");
        const int64_t oh = (int64_t(s.H) + 2 * int64_t(pad) - s.KH) / stride + 1,
                      ow = (int64_t(s.W) + 2 * int64_t(pad) - s.KW) / stride + 1;
        if (checked_prod({s.N, s.Cout, oh, ow}) > (int64_t(1) << 31)) throw py::value_error("output too large");
        s.OH = int(oh);
        s.OW = int(ow);
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
        [conv_shape](FArr dy, FArr x, FArr w, int stride, int pad, const std::string& impl, bool need_dx) {
            ConvShape s = conv_shape(x, w, stride, pad);
            if (dy.size() != int64_t(s.N) * s.Cout * s.OH * s.OW)
                throw py::value_error("dy has the wrong size");
            // need_dx=False: dx skipped (null), as for a network's first layer; returned as None
            FArr dx(need_dx ? std::vector<py::ssize_t>{s.N, s.Cin, s.H, s.W} : std::vector<py::ssize_t>{0}),
                dw({s.Cout, s.Cin, s.KH, s.KW}), db({s.Cout});
            std::fill_n(dw.mutable_data(), dw.size(), 0.f);
            std::fill_n(db.mutable_data(), db.size(), 0.f);
            (use_fast(impl) ? fast::conv_backward : ref::conv_backward)(need_dx ? dx.mutable_data() : nullptr,
                                                                        dw.mutable_data(), db.mutable_data(),
                                                                        dy.data(), x.data(), w.data(), s);
            return py::make_tuple(need_dx ? py::object(dx) : py::object(py::none()), dw, db);
        },
        py::arg("dy"), py::arg("x"), py::arg("w"), py::arg("stride") = 1, py::arg("padding") = 0,
        py::arg("impl") = "fast", py::arg("need_dx") = true);
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
            if (H < 1 || W < 1 || checked_prod({N, C, H, W}) > (int64_t(1) << 31))
                throw py::value_error("bad H, W");
            for (int64_t i = 0; i < am.size(); i++)
                if (am.data()[i] < 0 || am.data()[i] >= int64_t(H) * W)
                    throw py::value_error("argmax out of range");
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
        [](FArr logits, py::array_t<int32_t, py::array::c_style | py::array::forcecast> y, py::object w_obj) {
            need_ndim(logits, 2, "logits");
            const int N = int(logits.shape(0)), K = int(logits.shape(1));
            if (y.size() != N) throw py::value_error("one label per row");
            std::vector<float> w;
            if (!w_obj.is_none()) {
                FArr wa = py::cast<FArr>(w_obj);
                if (wa.size() != N) throw py::value_error("one weight per row");
                w.assign(wa.data(), wa.data() + N);
            }
            for (int i = 0; i < N; i++)
                if (y.data()[i] < 0 || y.data()[i] >= K) throw py::value_error("label out of range");
            FArr p({N, K}), d({N, K});
            ref::softmax_forward(p.mutable_data(), logits.data(), N, K);
            const float loss = ref::crossentropy_backward(d.mutable_data(), p.data(), y.data(), N, K,
                                                         w.empty() ? nullptr : w.data());
            return py::make_tuple(loss, p, d);
        },
        py::arg("logits"), py::arg("y"), py::arg("w") = py::none());
}

}  // namespace py_bindings
}  // namespace ndlm
