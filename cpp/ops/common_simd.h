// Helpers shared by the tuned kernels: buffers, static thread splits, blocked reductions,
// elementwise passes.
// Included by kernels_impl.h inside its per-ISA anonymous namespace (see there): no includes, no
// out-of-line std:: templates.

constexpr int V = Simd::V;

// ---- small helpers ---------------------------------------------------------------------------
inline int mini(int a, int b) { return a < b ? a : b; }
inline int maxi(int a, int b) { return a > b ? a : b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

// Heap buffer, 64-byte aligned, not initialised (zeroed with zero = true).
template <class T>
struct Buf {
    T* p = nullptr;
    explicit Buf(int64_t n, bool zero = false) {
        const size_t bytes = size_t(round_up(n > 0 ? n * int64_t(sizeof(T)) : 64, 64));
        void* q = nullptr;
        // never a null buffer: outside a parallel region this reaches Python as MemoryError
        if (posix_memalign(&q, 64, bytes) != 0) throw std::bad_alloc();
        p = static_cast<T*>(q);
        if (zero) std::memset(p, 0, bytes);
    }
    ~Buf() { std::free(p); }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;
    T& operator[](int64_t i) { return p[i]; }
    const T& operator[](int64_t i) const { return p[i]; }
};

// Contiguous static share [b, e) of `total` items for thread `tid` of `nth`.
inline void split_range(int64_t total, int nth, int tid, int64_t* b, int64_t* e) {
    *b = total * tid / nth;
    *e = total * (tid + 1) / nth;
}

// Parallel regions open only above kParMinWork units of work (ops/shared.h); with the if false a
// region runs with one thread and the static splits see nth = 1.
inline bool par_work(int64_t work) { return work >= kParMinWork; }

// ---- blocked reductions over one plane: float SIMD inside chunks, double across chunks --------
// A chunk whose float result is not finite (a sum or a deviation left float range on |x| ~ 1e38:
// the inputs are finite) is redone in double, the reference's way; on ordinary inputs that costs one
// isfinite per chunk. The functions return true if some chunk was redone.
constexpr int64_t RCHUNK = 1024;

inline bool finite_d(double v) { return v - v == 0.0; }  // false for inf and NaN

inline bool sum_f(const float* x, int64_t n, double* out) {
    double tot = 0.0;
    bool wide = false;
    for (int64_t b = 0; b < n; b += RCHUNK) {
        const int64_t e = min64(n, b + RCHUNK);
        R a0 = Simd::zero(), a1 = Simd::zero();
        int64_t i = b;
        for (; i + 2 * V <= e; i += 2 * V) {
            a0 = Simd::add(a0, Simd::load(x + i));
            a1 = Simd::add(a1, Simd::load(x + i + V));
        }
        for (; i + V <= e; i += V) a0 = Simd::add(a0, Simd::load(x + i));
        if (i < e) a1 = Simd::add(a1, Simd::loadp(x + i, int(e - i)));
        double c = double(Simd::hsum(Simd::add(a0, a1)));
        if (!finite_d(c)) {
            wide = true;
            c = 0.0;
            for (int64_t j = b; j < e; j++) c += double(x[j]);
        }
        tot += c;
    }
    *out = tot;
    return wide;
}
inline double sum_f(const float* x, int64_t n) {
    double t;
    sum_f(x, n, &t);
    return t;
}

// sum (x - m)^2
inline bool sqdev_f(const float* x, int64_t n, float m, double* out) {
    double tot = 0.0;
    bool wide = false;
    const R mv = Simd::set1(m);
    for (int64_t b = 0; b < n; b += RCHUNK) {
        const int64_t e = min64(n, b + RCHUNK);
        R a0 = Simd::zero(), a1 = Simd::zero();
        int64_t i = b;
        for (; i + 2 * V <= e; i += 2 * V) {
            const R d0 = Simd::sub(Simd::load(x + i), mv), d1 = Simd::sub(Simd::load(x + i + V), mv);
            a0 = Simd::fma(d0, d0, a0);
            a1 = Simd::fma(d1, d1, a1);
        }
        for (; i + V <= e; i += V) {
            const R d0 = Simd::sub(Simd::load(x + i), mv);
            a0 = Simd::fma(d0, d0, a0);
        }
        float ts = 0.f;
        for (; i < e; i++) {
            const float d = x[i] - m;
            ts += d * d;
        }
        double c = double(ts) + double(Simd::hsum(Simd::add(a0, a1)));
        if (!finite_d(c)) {
            wide = true;
            c = 0.0;
            for (int64_t j = b; j < e; j++) c += (double(x[j]) - m) * (double(x[j]) - m);
            tot += c;
            continue;
        }
        tot += double(ts);
        tot += double(Simd::hsum(Simd::add(a0, a1)));
    }
    *out = tot;
    return wide;
}
inline double sqdev_f(const float* x, int64_t n, float m) {
    double t;
    sqdev_f(x, n, m, &t);
    return t;
}

// sum dy and sum dy * (x - m); true if some chunk was redone in double (also when x - m itself
// overflowed: inf * dy and 0 * inf are not finite, so the chunk's sum shows it)
inline bool dydev_f(const float* dy, const float* x, int64_t n, float m, double* sdy, double* sdyx) {
    double t0 = 0.0, t1 = 0.0;
    bool wide = false;
    const R mv = Simd::set1(m);
    for (int64_t b = 0; b < n; b += RCHUNK) {
        const int64_t e = min64(n, b + RCHUNK);
        R a0 = Simd::zero(), a1 = Simd::zero(), c0 = Simd::zero(), c1 = Simd::zero();
        int64_t i = b;
        for (; i + 2 * V <= e; i += 2 * V) {
            const R g0 = Simd::load(dy + i), g1 = Simd::load(dy + i + V);
            a0 = Simd::add(a0, g0);
            a1 = Simd::add(a1, g1);
            c0 = Simd::fma(g0, Simd::sub(Simd::load(x + i), mv), c0);
            c1 = Simd::fma(g1, Simd::sub(Simd::load(x + i + V), mv), c1);
        }
        for (; i + V <= e; i += V) {
            const R g0 = Simd::load(dy + i);
            a0 = Simd::add(a0, g0);
            c0 = Simd::fma(g0, Simd::sub(Simd::load(x + i), mv), c0);
        }
        if (i < e) {  // masked dy lanes are 0, so the product vanishes there too
            const int k = int(e - i);
            const R g1 = Simd::loadp(dy + i, k);
            a1 = Simd::add(a1, g1);
            c1 = Simd::fma(g1, Simd::sub(Simd::loadp(x + i, k), mv), c1);
        }
        double u0 = double(Simd::hsum(Simd::add(a0, a1))), u1 = double(Simd::hsum(Simd::add(c0, c1)));
        if (!finite_d(u0 + u1)) {
            wide = true;
            u0 = u1 = 0.0;
            for (int64_t j = b; j < e; j++) {
                u0 += double(dy[j]);
                u1 += double(dy[j]) * (double(x[j]) - m);
            }
        }
        t0 += u0;
        t1 += u1;
    }
    *sdy = t0;
    *sdyx = t1;
    return wide;
}

// ---- elementwise passes -------------------------------------------------------------------
// Outputs larger than NT_BYTES (the whole tensor) are written with non-temporal stores: they
// cannot stay in cache for the next layer anyway, and streaming skips the read-for-ownership
// (measured here: 37 vs 23 GB/s for a copy on one core).
constexpr int64_t NT_BYTES = int64_t(24) << 20;

inline R ldk(const float* p, int k) { return k == V ? Simd::load(p) : Simd::loadp(p, k); }

// y[i, i + k) = f(i, k) for i in [0, n); f returns the vector of lanes [i, i + k) (k <= V)
template <class F>
inline void map_vec(float* y, int64_t n, bool nt, F f) {
    int64_t i = 0;
    if (nt && V > 1) {
        const int64_t mis = int64_t(reinterpret_cast<uintptr_t>(y) % (V * sizeof(float)));
        if (mis % sizeof(float) == 0) {
            int64_t head = mis ? (int64_t(V * sizeof(float)) - mis) / int64_t(sizeof(float)) : 0;
            if (head > n) head = n;
            if (head > 0) {
                Simd::storep(y, f(int64_t(0), int(head)), int(head));
                i = head;
            }
            for (; i + V <= n; i += V) Simd::stream(y + i, f(i, V));
            Simd::stream_fence();
        }
    }
    for (; i + V <= n; i += V) Simd::store(y + i, f(i, V));
    if (i < n) Simd::storep(y + i, f(i, int(n - i)), int(n - i));
}
