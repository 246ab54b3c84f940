// Run-time selection of the kernel instruction set.
//
// Each ISA translation unit (kernels_generic.cpp, kernels_avx2.cpp, kernels_avx512.cpp) exports
// one table of function pointers (kernels_table.h). On first use the dispatcher picks the best
// level the CPU (and OS) supports: avx512 (F+BW+VL) > avx2 (AVX2+FMA) > generic, unless the
// environment variable NDLM_SK_SIMD=generic|avx2|avx512 asks for a lower one (a level the CPU
// lacks is never used: the request is clamped to the best supported level). The choice is made
// once, thread-safely (function-local static), and can be changed later with set_simd_level(),
// e.g. by tests that compare the levels in one process.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels.h"
#include "kernels_table.h"

namespace ndlm {
namespace fast {
namespace {

using detail::KernelTable;

int best_supported() {  // 0 generic, 1 avx2, 2 avx512
#if defined(NDLM_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

int level_from_name(const char* s) {  // -1 when unknown
    if (!s) return -1;
    if (!std::strcmp(s, "generic") || !std::strcmp(s, "scalar") || !std::strcmp(s, "sse2")) return 0;
    if (!std::strcmp(s, "avx2")) return 1;
    if (!std::strcmp(s, "avx512")) return 2;
    return -1;
}

const KernelTable* table_for(int level) {
#if defined(NDLM_X86)
    if (level >= 2) return detail::table_avx512();
    if (level == 1) return detail::table_avx2();
#endif
    (void)level;
    return detail::table_generic();
}

std::atomic<const KernelTable*>& current() {
    static std::atomic<const KernelTable*> t([] {
        int lvl = best_supported();
        const int req = level_from_name(std::getenv("NDLM_SK_SIMD"));
        if (req >= 0 && req < lvl) lvl = req;
        return table_for(lvl);
    }());
    return t;
}

inline const KernelTable& T() { return *current().load(std::memory_order_acquire); }

}  // namespace

bool set_simd_level(const char* name) {
    const int req = level_from_name(name);
    if (req < 0 || req > best_supported()) return false;
    current().store(table_for(req), std::memory_order_release);
    return true;
}

const char* simd_level() { return T().name; }

void batchnorm_forward_train(float* y, float* mean, float* rstd, const float* x, const float* gamma,
                             const float* beta, int N, int C, int HW, float eps) {
    T().batchnorm_forward_train(y, mean, rstd, x, gamma, beta, N, C, HW, eps);
}
void batchnorm_forward_infer(float* y, const float* x, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, int N, int C, int HW,
                             float eps) {
    T().batchnorm_forward_infer(y, x, gamma, beta, running_mean, running_var, N, C, HW, eps);
}
void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* mean, const float* rstd, const float* gamma, int N, int C, int HW) {
    T().batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C, HW);
}
void lrn_forward(float* y, const float* x, int N, int C, int HW, int size, float alpha, float beta, float k) {
    T().lrn_forward(y, x, N, C, HW, size, alpha, beta, k);
}
void lrn_backward(float* dx, const float* dy, const float* x, int N, int C, int HW, int size, float alpha,
                  float beta, float k) {
    T().lrn_backward(dx, dy, x, N, C, HW, size, alpha, beta, k);
}
void conv_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s) {
    T().conv_forward(y, x, w, b, s);
}
void conv_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                   const ConvShape& s) {
    T().conv_backward(dx, dw, db, dy, x, w, s);
}
void relu_forward(float* y, const float* x, int64_t n) { T().relu_forward(y, x, n); }
void relu_backward(float* dx, const float* dy, const float* y, int64_t n) { T().relu_backward(dx, dy, y, n); }
void maxpool_forward(float* y, int32_t* argmax, const float* x, int N, int C, int H, int W, int K, int S,
                     int OH, int OW) {
    T().maxpool_forward(y, argmax, x, N, C, H, W, K, S, OH, OW);
}
void maxpool_backward(float* dx, const float* dy, const int32_t* argmax, int N, int C, int H, int W, int OH,
                      int OW) {
    T().maxpool_backward(dx, dy, argmax, N, C, H, W, OH, OW);
}
void fc_forward(float* y, const float* x, const float* w, const float* b, int N, int F, int O) {
    T().fc_forward(y, x, w, b, N, F, O);
}
void fc_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int N,
                 int F, int O) {
    T().fc_backward(dx, dw, db, dy, x, w, N, F, O);
}

void seg_bn_stats(float* mean, float* rstd, const float* x, const SegShape& s, const SegOp* ops, int nops,
                  float eps) {
    T().seg_bn_stats(mean, rstd, x, s, ops, nops, eps);
}
void seg_forward(float* y, int32_t* argmax, float* vlast, const float* x, const SegShape& s, const SegOp* ops,
                 int nops) {
    T().seg_forward(y, argmax, vlast, x, s, ops, nops);
}
void seg_bwd_sums(double* sdy, double* sdx, const float* x, const float* dy, const int32_t* argmax,
                  const float* vlast, const SegShape& s, const SegOp* ops, int nops, int j) {
    T().seg_bwd_sums(sdy, sdx, x, dy, argmax, vlast, s, ops, nops, j);
}
void seg_backward(float* dx, const float* x, const float* dy, const int32_t* argmax, const SegShape& s,
                  const SegOp* ops, int nops) {
    T().seg_backward(dx, x, dy, argmax, s, ops, nops);
}

}  // namespace fast
}  // namespace ndlm
