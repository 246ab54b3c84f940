// Overflow-checked size arithmetic for buffer sizes, element counts and offsets.
//
// Every product or sum that becomes an allocation size or an index bound in the core goes through
// these: on int64 overflow (or a negative size) they throw std::invalid_argument, which pybind11
// turns into ValueError, instead of wrapping around into a small buffer that the kernels then
// overrun. They are a backstop: Network's constructor and ensure_buffers first compare the
// network's memory estimate with the machine's memory (so a too-big stack fails with a message
// that names its layer), after which none of these can overflow.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace ndlm {

// The error the checks throw (a std::invalid_argument: ValueError in Python), so callers that know
// the context (the layer) can catch it and say where.
struct SizeError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

[[noreturn]] inline void size_overflow(const char* what, const char* op, int64_t a, int64_t b) {
    throw SizeError(std::string(what) + ": " + std::to_string(a) + " " + op + " " + std::to_string(b) +
                                " overflows 64-bit sizes");
}

inline int64_t checked_mul(int64_t a, int64_t b, const char* what = "size") {
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r)) size_overflow(what, "x", a, b);
    return r;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* what = "size") {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) size_overflow(what, "+", a, b);
    return r;
}

// Product of all factors, e.g. checked_prod({B, C, H, W}, "activation")
inline int64_t checked_prod(std::initializer_list<int64_t> factors, const char* what = "size") {
    int64_t r = 1;
    for (int64_t f : factors) r = checked_mul(r, f, what);
    return r;
}

// A count about to become a std::vector / allocation size: must be >= 0 and fit size_t.
inline size_t checked_count(int64_t n, const char* what = "size") {
    if (n < 0) throw SizeError(std::string(what) + ": negative size " + std::to_string(n));
    return size_t(n);
}

}  // namespace ndlm
