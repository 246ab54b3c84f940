// Developer tool (not part of the Python module): checks every tuned kernel of every SIMD level
// against the reference layers on odd shapes, and times the NDLM shapes.
//
//   .ci/kernel_check.sh                         # builds (CMake, -DNDLM_BUILD_KERNEL_CHECK=ON) and checks
//   build/kc/kernel_check check [levels...]     # correctness, levels: generic avx2 avx512 (default all)
//   build/kc/kernel_check bench [N] [levels...] # timings of the NDLM shapes at 1 and 2 threads
//   build/kc/kernel_check all
//
// Error metric: max |fast - ref| / max |ref| over the output (relative to the magnitude).
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels.h"
#include "kernels_table.h"
#include "layers.h"

using namespace ndlm;
using fast::detail::KernelTable;

static std::mt19937 rng(12345);
static std::vector<float> rnd(size_t n, float lo = -1.f, float hi = 1.f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}
static std::vector<float> rnd_quant(size_t n, int levels) {  // many ties
    std::uniform_int_distribution<int> d(0, levels - 1);
    std::vector<float> v(n);
    for (auto& x : v) x = float(d(rng)) * 0.5f;
    return v;
}
static double relerr(const float* a, const float* b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = std::fabs(double(a[i]) - b[i]);
        if (!(d <= md)) md = d;  // catches NaN
        mb = std::max(mb, std::fabs(double(b[i])));
    }
    return md / std::max(mb, 1e-30);
}
static double relerr(const std::vector<float>& a, const std::vector<float>& b) {
    return relerr(a.data(), b.data(), a.size());
}

struct Stat {
    double worst = 0;
    int count = 0;
    void add(double e) {
        if (!(e <= worst)) worst = e;
        count++;
    }
};

static int g_fail = 0;
static const double TOL = 1e-4;
static void report(const char* level, const char* kernel, const Stat& s) {
    const bool ok = s.worst <= TOL;
    if (!ok) g_fail++;
    std::printf("  %-8s %-26s cases %4d  max rel err %.2e  %s\n", level, kernel, s.count, s.worst,
                ok ? "ok" : "FAIL");
}

// ---------------------------------------------------------------------------------------------
static void check_level(const KernelTable& K) {
    const char* L = K.name;
    std::printf("[%s]\n", L);
    // ---- conv ----
    {
        Stat sf, sdx, sdw, sdb;
        struct C {
            int N, Cin, H, W, Cout, KH, KW, st, pad;
        };
        std::vector<C> cases = {
            {1, 3, 7, 9, 10, 5, 5, 1, 0},
            {3, 3, 31, 30, 10, 5, 5, 1, 0},
            {3, 1, 7, 9, 1, 1, 1, 1, 0},
            {1, 10, 31, 30, 3, 3, 3, 1, 1},
            {3, 17, 7, 9, 17, 3, 3, 2, 1},
            {1, 3, 31, 30, 10, 15, 15, 1, 0},
            {1, 3, 31, 30, 10, 15, 15, 1, 2},
            {3, 3, 7, 9, 10, 2, 3, 1, 2},
            {1, 10, 31, 30, 17, 2, 3, 3, 1},
            {1, 3, 31, 30, 10, 5, 5, 2, 2},
            {3, 17, 31, 30, 1, 1, 1, 1, 0},
            {1, 1, 31, 30, 17, 3, 3, 3, 0},
            {3, 10, 7, 9, 10, 5, 5, 1, 2},
            {1, 3, 7, 9, 8, 3, 3, 1, 2},
            {1, 3, 300, 300, 10, 5, 5, 1, 0},
            {3, 3, 33, 47, 10, 5, 5, 1, 0},
            {1, 3, 17, 65, 24, 5, 5, 1, 0},
            {1, 3, 9, 9, 2, 5, 5, 1, 4},
            {1, 2, 7, 9, 3, 3, 3, 2, 2},
            {1, 4, 12, 12, 5, 1, 1, 2, 0},
            {2, 3, 31, 30, 10, 15, 15, 2, 1},
            {3, 1, 61, 64, 3, 2, 3, 3, 0} /* stride > kernel: rows between two windows */,
            {2, 10, 33, 40, 3, 5, 5, 1, 1},
        };
        for (auto c : cases) {
            ConvShape s{c.N, c.Cin, c.H, c.W, c.Cout, c.KH, c.KW, c.st, c.pad, 0, 0};
            s.OH = (c.H + 2 * c.pad - c.KH) / c.st + 1;
            s.OW = (c.W + 2 * c.pad - c.KW) / c.st + 1;
            if (s.OH <= 0 || s.OW <= 0) continue;
            auto x = rnd(size_t(s.N) * s.Cin * s.H * s.W);
            auto w = rnd(size_t(s.Cout) * s.Cin * s.KH * s.KW);
            auto b = rnd(s.Cout);
            auto dy = rnd(size_t(s.N) * s.Cout * s.OH * s.OW);
            std::vector<float> y0(dy.size()), y1(dy.size());
            ref::conv_forward(y0.data(), x.data(), w.data(), b.data(), s);
            K.conv_forward(y1.data(), x.data(), w.data(), b.data(), s);
            sf.add(relerr(y1, y0));
            std::vector<float> dx0(x.size()), dx1(x.size(), 123.f);
            std::vector<float> dw0(w.size(), 0.5f), dw1(w.size(), 0.5f), db0(b.size(), 0.25f),
                db1(b.size(), 0.25f);
            ref::conv_backward(dx0.data(), dw0.data(), db0.data(), dy.data(), x.data(), w.data(), s);
            K.conv_backward(dx1.data(), dw1.data(), db1.data(), dy.data(), x.data(), w.data(), s);
            sdx.add(relerr(dx1, dx0));
            sdw.add(relerr(dw1, dw0));
            sdb.add(relerr(db1, db0));
            // null dx / null bias paths
            std::vector<float> dw2(w.size(), 0.5f);
            K.conv_backward(nullptr, dw2.data(), nullptr, dy.data(), x.data(), w.data(), s);
            sdw.add(relerr(dw2, dw0));
            ref::conv_forward(y0.data(), x.data(), w.data(), nullptr, s);
            K.conv_forward(y1.data(), x.data(), w.data(), nullptr, s);
            sf.add(relerr(y1, y0));
        }
        report(L, "conv_forward", sf);
        report(L, "conv_backward dx", sdx);
        report(L, "conv_backward dw", sdw);
        report(L, "conv_backward db", sdb);
    }
    // ---- batch norm ----
    {
        Stat sy, sm, sr, si, sdx, sdg, sdb;
        struct B {
            int N, C, HW;
            float off;
        };
        std::vector<B> cases = {{1, 1, 63, 0.f}, {3, 3, 270, 5.f},   {3, 10, 961, -2.f},
                                {1, 17, 7, 0.f}, {3, 3, 90000, 3.f}, {2, 10, 87616, 0.3f},
                                {5, 2, 1, 1.f},  {9, 10, 87616, 1.f} /* > 24 MB: non-temporal stores */};
        for (auto c : cases) {
            const size_t n = size_t(c.N) * c.C * c.HW;
            auto x = rnd(n, c.off - 1.f, c.off + 1.f);
            auto g = rnd(c.C, 0.5f, 1.5f), be = rnd(c.C);
            auto dy = rnd(n);
            std::vector<float> y0(n), y1(n), m0(c.C), m1(c.C), r0(c.C), r1(c.C);
            ref::batchnorm_forward_train(y0.data(), m0.data(), r0.data(), x.data(), g.data(), be.data(), c.N,
                                         c.C, c.HW, 1e-5f);
            K.batchnorm_forward_train(y1.data(), m1.data(), r1.data(), x.data(), g.data(), be.data(), c.N,
                                      c.C, c.HW, 1e-5f);
            sy.add(relerr(y1, y0));
            sm.add(relerr(m1, m0));
            sr.add(relerr(r1, r0));
            auto rm = rnd(c.C), rv = rnd(c.C, 0.5f, 2.f);
            ref::batchnorm_forward_infer(y0.data(), x.data(), g.data(), be.data(), rm.data(), rv.data(), c.N,
                                         c.C, c.HW, 1e-5f);
            K.batchnorm_forward_infer(y1.data(), x.data(), g.data(), be.data(), rm.data(), rv.data(), c.N,
                                      c.C, c.HW, 1e-5f);
            si.add(relerr(y1, y0));
            std::vector<float> dx0(n), dx1(n), dg0(c.C, 1.f), dg1(c.C, 1.f), db0(c.C, -1.f), db1(c.C, -1.f);
            ref::batchnorm_backward(dx0.data(), dg0.data(), db0.data(), dy.data(), x.data(), m0.data(),
                                    r0.data(), g.data(), c.N, c.C, c.HW);
            K.batchnorm_backward(dx1.data(), dg1.data(), db1.data(), dy.data(), x.data(), m0.data(),
                                 r0.data(), g.data(), c.N, c.C, c.HW);
            sdx.add(relerr(dx1, dx0));
            sdg.add(relerr(dg1, dg0));
            sdb.add(relerr(db1, db0));
            K.batchnorm_backward(nullptr, dg1.data(), db1.data(), dy.data(), x.data(), m0.data(), r0.data(),
                                 g.data(), c.N, c.C, c.HW);
            ref::batchnorm_backward(nullptr, dg0.data(), db0.data(), dy.data(), x.data(), m0.data(),
                                    r0.data(), g.data(), c.N, c.C, c.HW);
            sdg.add(relerr(dg1, dg0));
        }
        report(L, "batchnorm_fwd_train y", sy);
        report(L, "batchnorm_fwd_train mean", sm);
        report(L, "batchnorm_fwd_train rstd", sr);
        report(L, "batchnorm_forward_infer", si);
        report(L, "batchnorm_backward dx", sdx);
        report(L, "batchnorm_backward dgamma", sdg);
        report(L, "batchnorm_backward dbeta", sdb);
    }
    // ---- LRN ----
    {
        Stat sy, sdx;
        struct Lc {
            int N, C, HW, size;
            float alpha, beta, k;
        };
        std::vector<Lc> cases = {{1, 3, 63, 5, 1e-4f, 0.75f, 2.f},    {3, 3, 900, 5, 1e-4f, 0.75f, 2.f},
                                 {1, 1, 7, 5, 1e-4f, 0.75f, 2.f},     {3, 10, 961, 7, 0.5f, 0.75f, 1.f},
                                 {1, 17, 270, 3, 0.3f, 0.6f, 1.5f},   {1, 10, 100, 1, 1.f, 0.5f, 1.f},
                                 {2, 17, 1030, 11, 2.f, 1.f, 1.f},    {1, 3, 90000, 5, 1e-4f, 0.75f, 2.f},
                                 {24, 3, 90001, 5, 1e-4f, 0.75f, 2.f} /* > 24 MB */};
        for (auto c : cases) {
            const size_t n = size_t(c.N) * c.C * c.HW;
            auto x = rnd(n, -3.f, 3.f), dy = rnd(n);
            std::vector<float> y0(n), y1(n), d0(n), d1(n);
            ref::lrn_forward(y0.data(), x.data(), c.N, c.C, c.HW, c.size, c.alpha, c.beta, c.k);
            K.lrn_forward(y1.data(), x.data(), c.N, c.C, c.HW, c.size, c.alpha, c.beta, c.k);
            sy.add(relerr(y1, y0));
            ref::lrn_backward(d0.data(), dy.data(), x.data(), c.N, c.C, c.HW, c.size, c.alpha, c.beta, c.k);
            K.lrn_backward(d1.data(), dy.data(), x.data(), c.N, c.C, c.HW, c.size, c.alpha, c.beta, c.k);
            sdx.add(relerr(d1, d0));
        }
        report(L, "lrn_forward", sy);
        report(L, "lrn_backward", sdx);
    }
    // ---- ReLU ----
    {
        Stat sy, sdx;
        for (int64_t n : {1, 7, 100, 1000003, 7000001 /* > 24 MB */}) {
            auto x = rnd(n), dy = rnd(n);
            std::vector<float> y0(n), y1(n), d0(n), d1(n);
            ref::relu_forward(y0.data(), x.data(), n);
            K.relu_forward(y1.data(), x.data(), n);
            sy.add(relerr(y1, y0));
            ref::relu_backward(d0.data(), dy.data(), y0.data(), n);
            K.relu_backward(d1.data(), dy.data(), y0.data(), n);
            sdx.add(relerr(d1, d0));
        }
        report(L, "relu_forward", sy);
        report(L, "relu_backward", sdx);
    }
    // ---- max pooling (ties on purpose: argmax must match exactly) ----
    {
        Stat sy, sa, sdx;
        struct P {
            int N, C, H, W, K, S;
            bool ties;
        };
        std::vector<P> cases = {{1, 1, 7, 9, 2, 2, false},
                                {3, 3, 31, 30, 5, 5, true},
                                {3, 10, 31, 30, 7, 3, true},
                                {1, 17, 7, 9, 2, 2, true},
                                {2, 10, 296, 296, 5, 5, false},
                                {1, 3, 31, 30, 3, 1, true},
                                {1, 2, 9, 9, 5, 5, true},
                                {2, 10, 296, 296, 5, 5, true},
                                {9, 10, 296, 296, 5, 5, true} /* > 24 MB */,
                                {9, 10, 301, 299, 5, 6, false},
                                {1, 3, 31, 30, 2, 3, false}};
        for (auto c : cases) {
            const int OH = (c.H - c.K) / c.S + 1, OW = (c.W - c.K) / c.S + 1;
            const size_t n = size_t(c.N) * c.C * c.H * c.W, m = size_t(c.N) * c.C * OH * OW;
            auto x = c.ties ? rnd_quant(n, 3) : rnd(n);
            auto dy = rnd(m);
            std::vector<float> y0(m), y1(m), d0(n), d1(n, 7.f);
            std::vector<int32_t> a0(m), a1(m);
            ref::maxpool_forward(y0.data(), a0.data(), x.data(), c.N, c.C, c.H, c.W, c.K, c.S, OH, OW);
            K.maxpool_forward(y1.data(), a1.data(), x.data(), c.N, c.C, c.H, c.W, c.K, c.S, OH, OW);
            sy.add(relerr(y1, y0));
            size_t bad = 0;
            for (size_t i = 0; i < m; i++) bad += a0[i] != a1[i];
            sa.add(double(bad));
            ref::maxpool_backward(d0.data(), dy.data(), a0.data(), c.N, c.C, c.H, c.W, OH, OW);
            K.maxpool_backward(d1.data(), dy.data(), a0.data(), c.N, c.C, c.H, c.W, OH, OW);
            sdx.add(relerr(d1, d0));
        }
        report(L, "maxpool_forward y", sy);
        report(L, "maxpool_forward argmax(#bad)", sa);
        report(L, "maxpool_backward", sdx);
    }
    // ---- fully connected ----
    {
        Stat sy, sdx, sdw, sdb;
        struct Fc {
            int N, F, O;
        };
        std::vector<Fc> cases = {{1, 1, 1},      {3, 7, 5},      {3, 1000, 9},
                                 {17, 34810, 5}, {128, 3001, 5}, {2, 513, 3}};
        for (auto c : cases) {
            auto x = rnd(size_t(c.N) * c.F), w = rnd(size_t(c.O) * c.F), b = rnd(c.O),
                 dy = rnd(size_t(c.N) * c.O);
            std::vector<float> y0(size_t(c.N) * c.O), y1(y0.size());
            ref::fc_forward(y0.data(), x.data(), w.data(), b.data(), c.N, c.F, c.O);
            K.fc_forward(y1.data(), x.data(), w.data(), b.data(), c.N, c.F, c.O);
            sy.add(relerr(y1, y0));
            std::vector<float> dx0(x.size()), dx1(x.size()), dw0(w.size(), 1.f), dw1(w.size(), 1.f),
                db0(c.O, 2.f), db1(c.O, 2.f);
            ref::fc_backward(dx0.data(), dw0.data(), db0.data(), dy.data(), x.data(), w.data(), c.N, c.F,
                             c.O);
            K.fc_backward(dx1.data(), dw1.data(), db1.data(), dy.data(), x.data(), w.data(), c.N, c.F, c.O);
            sdx.add(relerr(dx1, dx0));
            sdw.add(relerr(dw1, dw0));
            sdb.add(relerr(db1, db0));
            K.fc_backward(nullptr, dw1.data(), db1.data(), dy.data(), x.data(), w.data(), c.N, c.F, c.O);
            ref::fc_backward(nullptr, dw0.data(), db0.data(), dy.data(), x.data(), w.data(), c.N, c.F, c.O);
            sdw.add(relerr(dw1, dw0));
        }
        report(L, "fc_forward", sy);
        report(L, "fc_backward dx", sdx);
        report(L, "fc_backward dw", sdw);
        report(L, "fc_backward db", sdb);
    }
}

// Same thread count -> bitwise identical results (static splits, fixed-order sums).
static void check_determinism(const KernelTable& K) {
    ConvShape s{5, 3, 64, 61, 10, 5, 5, 1, 0, 60, 57};
    auto x = rnd(size_t(s.N) * 3 * 64 * 61), w = rnd(750), dy = rnd(size_t(s.N) * 10 * 60 * 57);
    int bad = 0;
    for (int th : {1, 2, 3}) {
        omp_set_num_threads(th);
        std::vector<float> dw[2], dx[2], bnm[2], bnr[2], by[2];
        for (int r = 0; r < 2; r++) {
            dw[r].assign(750, 0.f);
            dx[r].assign(x.size(), 0.f);
            K.conv_backward(dx[r].data(), dw[r].data(), nullptr, dy.data(), x.data(), w.data(), s);
            bnm[r].assign(10, 0.f);
            bnr[r].assign(10, 0.f);
            by[r].assign(dy.size(), 0.f);
            std::vector<float> g(10, 1.f), b(10, 0.f);
            K.batchnorm_forward_train(by[r].data(), bnm[r].data(), bnr[r].data(), dy.data(), g.data(),
                                      b.data(), s.N, 10, 60 * 57, 1e-5f);
        }
        bad += dw[0] != dw[1] || dx[0] != dx[1] || bnm[0] != bnm[1] || bnr[0] != bnr[1] || by[0] != by[1];
    }
    omp_set_num_threads(2);
    std::printf("  %-8s %-26s %s\n", K.name, "determinism (1,2,3 thr)", bad ? "FAIL" : "ok");
    if (bad) g_fail++;
}

// ---------------------------------------------------------------------------------------------
template <class F>
static double time_ms(F f, int reps = 7) {
    f();  // warm-up
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        auto t0 = std::chrono::steady_clock::now();
        f();
        auto t1 = std::chrono::steady_clock::now();
        best = std::min(best, std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    return best;
}

static void bench_level(const KernelTable& K, int N) {
    const int H0 = 300, C0 = 3, H1 = 296, C1 = 10, H2 = 59;
    const size_t n0 = size_t(N) * C0 * H0 * H0, n1 = size_t(N) * C1 * H1 * H1, n2 = size_t(N) * C1 * H2 * H2;
    const int F = C1 * H2 * H2, O = 5;
    auto x0 = rnd(n0), d0 = rnd(n0), x1 = rnd(n1), d1 = rnd(n1), x2 = rnd(n2), d2 = rnd(n2);
    std::vector<float> y0(n0), y1(n1), y2(n2), e0(n0), e1(n1);
    std::vector<int32_t> am(n2);
    auto w = rnd(750), b = rnd(10), fw = rnd(size_t(O) * F), fb = rnd(O), fdy = rnd(size_t(N) * O);
    std::vector<float> dw(750), db(10), fdw(size_t(O) * F), fdb(O), fy(size_t(N) * O);
    std::vector<float> g(10, 1.f), be(10, 0.f), m(10), r(10), dg(10), dbe(10);
    ConvShape s{N, 3, 300, 300, 10, 5, 5, 1, 0, 296, 296};
    const double conv_gf = 2.0 * N * 10 * 296 * 296 * 75 / 1e9;
    const double MB = 1e6;
    struct Row {
        const char* name;
        double ms1, ms2;
        double work;
        const char* unit;
    };
    std::vector<Row> rows;
    auto run = [&](const char* name, double work, const char* unit, auto f) {
        double ms[2];
        for (int t = 1; t <= 2; t++) {
            omp_set_num_threads(t);
            ms[t - 1] = time_ms(f);
        }
        rows.push_back({name, ms[0], ms[1], work, unit});
        const double w1 = work / ms[0] * 1e3, w2 = work / ms[1] * 1e3;
        std::printf("  %-8s %-30s 1thr %8.2f ms %7.1f %-6s | 2thr %8.2f ms %7.1f %-6s\n", K.name, name, ms[0],
                    w1, unit, ms[1], w2, unit);
        std::fflush(stdout);
    };
    const double B0 = 4.0 * n0 / 1e9, B1 = 4.0 * n1 / 1e9, B2 = 4.0 * n2 / 1e9;
    (void)MB;
    // traffic counted as the bytes each kernel must read and write once
    run("bn_fwd_train 300x300x3", 2 * B0, "GB/s", [&] {
        K.batchnorm_forward_train(y0.data(), m.data(), r.data(), x0.data(), g.data(), be.data(), N, 3, 90000,
                                  1e-5f);
    });
    run("lrn_fwd 300x300x3", 2 * B0, "GB/s",
        [&] { K.lrn_forward(y0.data(), x0.data(), N, 3, 90000, 5, 1e-4f, 0.75f, 2.f); });
    run("conv_fwd 3->10 5x5", conv_gf, "GFLOP/s",
        [&] { K.conv_forward(y1.data(), x0.data(), w.data(), b.data(), s); });
    run("bn_fwd_train 296x296x10", 2 * B1, "GB/s", [&] {
        K.batchnorm_forward_train(y1.data(), m.data(), r.data(), x1.data(), g.data(), be.data(), N, 10,
                                  296 * 296, 1e-5f);
    });
    run("relu_fwd 296x296x10", 2 * B1, "GB/s", [&] { K.relu_forward(y1.data(), x1.data(), int64_t(n1)); });
    run("maxpool_fwd 5/5 296->59", B1 + 2 * B2, "GB/s",
        [&] { K.maxpool_forward(y2.data(), am.data(), x1.data(), N, 10, 296, 296, 5, 5, 59, 59); });
    run("bn_fwd_train 59x59x10", 2 * B2, "GB/s", [&] {
        K.batchnorm_forward_train(y2.data(), m.data(), r.data(), x2.data(), g.data(), be.data(), N, 10,
                                  59 * 59, 1e-5f);
    });
    run("fc_fwd 34810->5", B2, "GB/s",
        [&] { K.fc_forward(fy.data(), x2.data(), fw.data(), fb.data(), N, F, O); });
    run("fc_bwd 34810->5", 2 * B2, "GB/s",
        [&] { K.fc_backward(e0.data(), fdw.data(), fdb.data(), fdy.data(), x2.data(), fw.data(), N, F, O); });
    run("bn_bwd 59x59x10", 3 * B2, "GB/s", [&] {
        K.batchnorm_backward(e1.data(), dg.data(), dbe.data(), d2.data(), x2.data(), m.data(), r.data(),
                             g.data(), N, 10, 59 * 59);
    });
    run("maxpool_bwd 5/5", B1 + 2 * B2, "GB/s",
        [&] { K.maxpool_backward(e1.data(), d2.data(), am.data(), N, 10, 296, 296, 59, 59); });
    run("bn_bwd 296x296x10", 3 * B1, "GB/s", [&] {
        K.batchnorm_backward(e1.data(), dg.data(), dbe.data(), d1.data(), x1.data(), m.data(), r.data(),
                             g.data(), N, 10, 296 * 296);
    });
    run("relu_bwd 296x296x10", 3 * B1, "GB/s",
        [&] { K.relu_backward(e1.data(), d1.data(), x1.data(), int64_t(n1)); });
    run("conv_bwd dw+db (no dx)", conv_gf, "GFLOP/s",
        [&] { K.conv_backward(nullptr, dw.data(), db.data(), d1.data(), x0.data(), w.data(), s); });
    run("conv_bwd dx+dw+db", 2 * conv_gf, "GFLOP/s",
        [&] { K.conv_backward(e0.data(), dw.data(), db.data(), d1.data(), x0.data(), w.data(), s); });
    run("bn_bwd 300x300x3", 3 * B0, "GB/s", [&] {
        K.batchnorm_backward(e0.data(), dg.data(), dbe.data(), d0.data(), x0.data(), m.data(), r.data(),
                             g.data(), N, 3, 90000);
    });
    run("lrn_bwd 300x300x3", 3 * B0, "GB/s",
        [&] { K.lrn_backward(e0.data(), d0.data(), x0.data(), N, 3, 90000, 5, 1e-4f, 0.75f, 2.f); });
    double t1 = 0, t2 = 0;
    for (auto& rw : rows)
        if (std::strcmp(rw.name, "conv_bwd dw+db (no dx)") != 0) {
            t1 += rw.ms1;
            t2 += rw.ms2;
        }
    std::printf("  %-8s %-30s 1thr %8.2f ms %7.1f img/s  | 2thr %8.2f ms %7.1f img/s\n", K.name,
                "TOTAL (one training step)", t1, N / t1 * 1e3, t2, N / t2 * 1e3);
}

int main(int argc, char** argv) {
    std::string mode = argc > 1 ? argv[1] : "all";
    int argi = 2;
    int N = 32;
    if (mode == "bench" && argc > 2 && std::atoi(argv[2]) > 0) N = std::atoi(argv[argi++]);
    std::vector<const KernelTable*> tabs;
    auto want = [&](const char* nm) {
        if (argc <= argi) return true;
        for (int i = argi; i < argc; i++)
            if (!std::strcmp(argv[i], nm)) return true;
        return false;
    };
    if (want("generic")) tabs.push_back(fast::detail::table_generic());
    __builtin_cpu_init();
    if (want("avx2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        tabs.push_back(fast::detail::table_avx2());
    if (want("avx512") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        tabs.push_back(fast::detail::table_avx512());
    std::printf("dispatcher picked: %s (NDLM_SK_SIMD=%s)\n", fast::simd_level(),
                std::getenv("NDLM_SK_SIMD") ? std::getenv("NDLM_SK_SIMD") : "");
    if (mode == "check" || mode == "all") {
        omp_set_num_threads(2);
        for (auto t : tabs) {
            check_level(*t);
            check_determinism(*t);
        }
        // the dispatcher entry points themselves
        for (const char* lv : {"generic", "avx2", "avx512"}) {
            if (!fast::set_simd_level(lv)) continue;
            ConvShape s{1, 3, 31, 30, 10, 5, 5, 1, 0, 27, 26};
            auto x = rnd(3 * 31 * 30), w = rnd(750), b = rnd(10);
            std::vector<float> y0(10 * 27 * 26), y1(y0.size());
            ref::conv_forward(y0.data(), x.data(), w.data(), b.data(), s);
            fast::conv_forward(y1.data(), x.data(), w.data(), b.data(), s);
            const double e = relerr(y1, y0);
            std::printf("  dispatch set_simd_level(%s) -> %s, conv err %.2e %s\n", lv, fast::simd_level(), e,
                        e < TOL ? "ok" : "FAIL");
            if (e >= TOL) g_fail++;
        }
        std::printf("%s: %d failure(s)\n", g_fail ? "FAILED" : "PASSED", g_fail);
    }
    if (mode == "bench" || mode == "all") {
        std::printf("timings, N=%d, min of 7 runs, 1 and 2 threads\n", N);
        for (auto t : tabs) bench_level(*t, N);
    }
    return g_fail ? 1 : 0;
}
