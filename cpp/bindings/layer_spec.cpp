// Layer-spec dicts (the estimator's `layers` parameter) <-> LayerSpec.
#include <pybind11/pybind11.h>

#include <cmath>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>

#include "bindings.h"

namespace ndlm {
namespace py_bindings {
namespace {

#define NDLM_UNPAREN(...) __VA_ARGS__
struct TypeInfo {
    const char* name;
    LayerType type;
    std::set<std::string> keys;  // the settings its spec dict may have
};
const TypeInfo kTypeInfo[] = {
#define NDLM_LAYER(Enum, name, keys) {name, LayerType::Enum, {NDLM_UNPAREN keys}},
#include "layer_types.def"
};

const TypeInfo* find_type(const std::string& name) {
    for (const TypeInfo& t : kTypeInfo)
        if (name == t.name) return &t;
    return nullptr;
}

const TypeInfo& info_of(LayerType type) {
    for (const TypeInfo& t : kTypeInfo)
        if (t.type == type) return t;
    throw std::logic_error("layer type missing from layer_types.def");
}

std::string known_types() {
    std::string s;
    for (const TypeInfo& t : kTypeInfo) s += (s.empty() ? "" : ", ") + std::string(t.name);
    return s;
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

}  // namespace

int check_threads(int n) {
    if (n < 1 || n > kMaxThreads)
        throw py::value_error("n_threads must be between 1 and " + std::to_string(kMaxThreads) + ", got " +
                              std::to_string(n));
    return n;
}

LayerSpec parse_spec(const py::handle& h, size_t i) {
    const std::string where = "layer " + std::to_string(i);
    if (!py::isinstance<py::dict>(h))
        throw py::value_error(where + ": a layer spec must be a dict with a 'type' key");
    auto d = py::reinterpret_borrow<py::dict>(h);
    if (!d.contains("type")) throw py::value_error(where + ": missing 'type'");
    const std::string t = py::str(d["type"]).cast<std::string>();
    const TypeInfo* info = find_type(t);
    if (!info)
        throw py::value_error(where + ": unknown layer type '" + t + "' (known: " + known_types() + ")");
    LayerSpec s;
    s.type = info->type;
    const auto& allowed = info->keys;
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
    d["type"] = info_of(s.type).name;
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

}  // namespace py_bindings
}  // namespace ndlm
