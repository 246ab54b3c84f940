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

#define NDLM_OP(name, params, args) \
    void name params { T().name args; }
#define NDLM_SEG_OP(name, params, args) NDLM_OP(name, params, args)
#include "ops.def"

}  // namespace fast
}  // namespace ndlm
