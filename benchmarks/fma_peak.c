// Peak float32 FMA throughput of this CPU: 12 independent FMA chains per thread, one OpenMP thread
// per core. Built by bench_speed.py (fma_peak()) with -mavx2 -mfma (256-bit) or -mavx512f (512-bit), the ISA ndlm_sk runs.
// Prints the best GFLOP/s over 5 repetitions: the ceiling that a kernel's GFLOP/s is compared with.
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#define ISA "avx512"
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#define ISA "avx2"
#endif

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
volatile float seed[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

int main(void) {
  const long iters = 100000000L;
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now();
    float sink = 0;
#pragma omp parallel reduction(+ : sink)
    {
      vec a0 = SET1(seed[0]), a1 = SET1(seed[1]), a2 = SET1(seed[2]), a3 = SET1(seed[3]);
      vec a4 = SET1(seed[4]), a5 = SET1(seed[5]), a6 = SET1(seed[6]), a7 = SET1(seed[7]);
      vec a8 = SET1(seed[8]), a9 = SET1(seed[9]), a10 = SET1(seed[10]), a11 = SET1(seed[11]);
      const vec m = SET1(0.999999f), c = SET1(1e-7f);
      for (long i = 0; i < iters; i++) {
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
        a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c); a3 = FMA(a3, m, c);
        a4 = FMA(a4, m, c); a5 = FMA(a5, m, c); a6 = FMA(a6, m, c); a7 = FMA(a7, m, c);
        a8 = FMA(a8, m, c); a9 = FMA(a9, m, c); a10 = FMA(a10, m, c); a11 = FMA(a11, m, c);
      }
      vec s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
      s = ADD(s, ADD(ADD(a8, a9), ADD(a10, a11)));
      float o[LANES];
      STORE(o, s);
      sink += o[0];
    }
    double gf = (double)iters * 12 * LANES * 2 * omp_get_max_threads() / (now() - t0) / 1e9;
    if (gf > best) best = gf;
    if (sink == 12345.f) printf("%g\n", sink);
  }
  printf("%s threads=%d peak GFLOP/s=%.1f\n", ISA, omp_get_max_threads(), best);
  return 0;
}
