// SIMD-width abstraction for the tuned kernels. Included (through kernels_impl.h) by each ISA
// translation unit, inside that unit's own namespace (NDLM_ISA_NS), so the same names compiled
// with different -m flags never meet at link time. The level is picked from the compiler's
// predefined macros of the including unit:
//   __AVX512F__          -> 16 lanes, 32 registers, masked partial loads/stores
//   __AVX2__ && __FMA__  -> 8 lanes, 16 registers, fused multiply-add
//   __SSE2__ (x86-64)    -> 4 lanes, 16 registers, multiply + add
//   otherwise            -> 1 lane (scalar), for non-x86 builds
// Every function here is `static inline` inside a struct in the ISA namespace: no weak symbols
// are shared between units compiled with different instruction sets.
#pragma once
#ifndef NDLM_ISA_NS
#error "define NDLM_ISA_NS before including simd.h"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__SSE2__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ndlm {
namespace NDLM_ISA_NS {

#if defined(__AVX512F__)
struct Simd {
    static constexpr int V = 16;     // float lanes
    static constexpr int NREG = 32;  // vector registers
    static constexpr const char* name = "avx512";
    using R = __m512;
    static inline R zero() { return _mm512_setzero_ps(); }
    static inline R set1(float x) { return _mm512_set1_ps(x); }
    static inline R load(const float* p) { return _mm512_loadu_ps(p); }
    static inline void store(float* p, R v) { _mm512_storeu_ps(p, v); }
    static inline __mmask16 mask(int n) { return __mmask16((1u << n) - 1u); }
    // n in [0, V]: lanes >= n read as 0 / are not written
    static inline R loadp(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
    static inline void storep(float* p, R v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
    static inline R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
    static inline R add(R a, R b) { return _mm512_add_ps(a, b); }
    static inline R sub(R a, R b) { return _mm512_sub_ps(a, b); }
    static inline R mul(R a, R b) { return _mm512_mul_ps(a, b); }
    static inline R max(R a, R b) { return _mm512_max_ps(a, b); }
    // (a > 0) ? b : 0, false for NaN
    static inline R sel_gt0(R a, R b) {
        return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_GT_OQ), b);
    }
    static inline R rsqrt_approx(R a) { return _mm512_rsqrt14_ps(a); }
    // lanes i: p[i * stride]
    static inline R gather(const float* p, int stride) {
        const __m512i idx =
            _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                               _mm512_set1_epi32(stride));
        return _mm512_i32gather_ps(idx, p, 4);
    }
    // comparison masks and blend: blend(m, a, b) = m ? a : b per lane
    using M = __mmask16;
    static inline M gt(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
    static inline M eq(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
    static inline M lt(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
    static inline M mor(M a, M b) { return M(a | b); }
    static inline M mand(M a, M b) { return M(a & b); }
    static inline R blend(M m, R a, R b) { return _mm512_mask_blend_ps(m, b, a); }  // rel err < 2^-14
    // non-temporal store, p aligned to V floats
    static inline void stream(float* p, R v) { _mm512_stream_ps(p, v); }
    static inline void stream_fence() { _mm_sfence(); }
    static inline float hsum(R v) {
        v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));  // swap 256-bit halves
        v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));  // swap 128-bit quarters
        v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
        v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));
        return _mm512_cvtss_f32(v);
    }
};
#elif defined(__AVX2__) && defined(__FMA__)
alignas(32) static const int32_t simd_mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                        0,  0,  0,  0,  0,  0,  0,  0};
struct Simd {
    static constexpr int V = 8;
    static constexpr int NREG = 16;
    static constexpr const char* name = "avx2";
    using R = __m256;
    static inline R zero() { return _mm256_setzero_ps(); }
    static inline R set1(float x) { return _mm256_set1_ps(x); }
    static inline R load(const float* p) { return _mm256_loadu_ps(p); }
    static inline void store(float* p, R v) { _mm256_storeu_ps(p, v); }
    static inline __m256i mask(int n) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(simd_mask_table + 8 - n));
    }
    static inline R loadp(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
    static inline void storep(float* p, R v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
    static inline R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
    static inline R add(R a, R b) { return _mm256_add_ps(a, b); }
    static inline R sub(R a, R b) { return _mm256_sub_ps(a, b); }
    static inline R mul(R a, R b) { return _mm256_mul_ps(a, b); }
    static inline R max(R a, R b) { return _mm256_max_ps(a, b); }
    static inline R sel_gt0(R a, R b) {
        return _mm256_and_ps(_mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_GT_OQ), b);
    }
    static inline R rsqrt_approx(R a) { return _mm256_rsqrt_ps(a); }  // rel err < 1.5 * 2^-12
    static inline R gather(const float* p, int stride) {
        const __m256i idx =
            _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(stride));
        return _mm256_i32gather_ps(p, idx, 4);
    }
    using M = __m256;
    static inline M gt(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
    static inline M eq(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
    static inline M lt(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
    static inline M mor(M a, M b) { return _mm256_or_ps(a, b); }
    static inline M mand(M a, M b) { return _mm256_and_ps(a, b); }
    static inline R blend(M m, R a, R b) { return _mm256_blendv_ps(b, a, m); }
    static inline void stream(float* p, R v) { _mm256_stream_ps(p, v); }
    static inline void stream_fence() { _mm_sfence(); }
    static inline float hsum(R v) {
        __m128 b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        b = _mm_add_ps(b, _mm_movehl_ps(b, b));
        b = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));
        return _mm_cvtss_f32(b);
    }
};
#elif defined(__SSE2__)
struct Simd {
    static constexpr int V = 4;
    static constexpr int NREG = 16;
    static constexpr const char* name = "generic";
    using R = __m128;
    static inline R zero() { return _mm_setzero_ps(); }
    static inline R set1(float x) { return _mm_set1_ps(x); }
    static inline R load(const float* p) { return _mm_loadu_ps(p); }
    static inline void store(float* p, R v) { _mm_storeu_ps(p, v); }
    static inline R loadp(const float* p, int n) {
        alignas(16) float t[4] = {0.f, 0.f, 0.f, 0.f};
        for (int i = 0; i < n; i++) t[i] = p[i];
        return _mm_load_ps(t);
    }
    static inline void storep(float* p, R v, int n) {
        alignas(16) float t[4];
        _mm_store_ps(t, v);
        for (int i = 0; i < n; i++) p[i] = t[i];
    }
    static inline R fma(R a, R b, R c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
    static inline R add(R a, R b) { return _mm_add_ps(a, b); }
    static inline R sub(R a, R b) { return _mm_sub_ps(a, b); }
    static inline R mul(R a, R b) { return _mm_mul_ps(a, b); }
    static inline R max(R a, R b) { return _mm_max_ps(a, b); }
    static inline R sel_gt0(R a, R b) { return _mm_and_ps(_mm_cmpgt_ps(a, _mm_setzero_ps()), b); }
    static inline R rsqrt_approx(R a) { return _mm_rsqrt_ps(a); }
    static inline R gather(const float* p, int stride) {
        return _mm_setr_ps(p[0], p[stride], p[2 * stride], p[3 * stride]);
    }
    using M = __m128;
    static inline M gt(R a, R b) { return _mm_cmpgt_ps(a, b); }
    static inline M eq(R a, R b) { return _mm_cmpeq_ps(a, b); }
    static inline M lt(R a, R b) { return _mm_cmplt_ps(a, b); }
    static inline M mor(M a, M b) { return _mm_or_ps(a, b); }
    static inline M mand(M a, M b) { return _mm_and_ps(a, b); }
    static inline R blend(M m, R a, R b) { return _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b)); }
    static inline void stream(float* p, R v) { _mm_stream_ps(p, v); }
    static inline void stream_fence() { _mm_sfence(); }
    static inline float hsum(R v) {
        __m128 b = _mm_add_ps(v, _mm_movehl_ps(v, v));
        b = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));
        return _mm_cvtss_f32(b);
    }
};
#else
struct Simd {
    static constexpr int V = 1;
    static constexpr int NREG = 16;
    static constexpr const char* name = "generic";
    using R = float;
    static inline R zero() { return 0.f; }
    static inline R set1(float x) { return x; }
    static inline R load(const float* p) { return *p; }
    static inline void store(float* p, R v) { *p = v; }
    static inline R loadp(const float* p, int n) { return n > 0 ? *p : 0.f; }
    static inline void storep(float* p, R v, int n) {
        if (n > 0) *p = v;
    }
    static inline R fma(R a, R b, R c) { return a * b + c; }
    static inline R add(R a, R b) { return a + b; }
    static inline R sub(R a, R b) { return a - b; }
    static inline R mul(R a, R b) { return a * b; }
    static inline R max(R a, R b) { return a > b ? a : b; }
    static inline R sel_gt0(R a, R b) { return a > 0.f ? b : 0.f; }
    static inline R rsqrt_approx(R a) { return 1.f / std::sqrt(a); }
    static inline R gather(const float* p, int) { return *p; }
    using M = bool;
    static inline M gt(R a, R b) { return a > b; }
    static inline M eq(R a, R b) { return a == b; }
    static inline M lt(R a, R b) { return a < b; }
    static inline M mor(M a, M b) { return a || b; }
    static inline M mand(M a, M b) { return a && b; }
    static inline R blend(M m, R a, R b) { return m ? a : b; }
    static inline void stream(float* p, R v) { *p = v; }
    static inline void stream_fence() {}
    static inline float hsum(R v) { return v; }
};
#endif

}  // namespace NDLM_ISA_NS
}  // namespace ndlm
