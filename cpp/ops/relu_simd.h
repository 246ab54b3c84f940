// Tuned ReLU (reference: relu_ref.cpp).
// Included by kernels_impl.h inside its per-ISA anonymous namespace (see there): no includes, no
// out-of-line std:: templates.

// =============================================================================================
// ReLU
// =============================================================================================
void relu_forward(float* y, const float* x, int64_t n) {
#pragma omp parallel if (par_work(n))
    {
        int64_t b, e;
        split_range(n, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        const R z = Simd::zero();
        const float* xb = x + b;
        // max(x, 0) returns 0 for NaN and +0 for -0, as x > 0 ? x : 0
        map_vec(y + b, e - b, n * int64_t(sizeof(float)) > NT_BYTES,
                [&](int64_t i, int k) { return Simd::max(ldk(xb + i, k), z); });
    }
}
void relu_backward(float* dx, const float* dy, const float* y, int64_t n) {
#pragma omp parallel if (par_work(n))
    {
        int64_t b, e;
        split_range(n, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        const float *yb = y + b, *gb = dy + b;
        map_vec(dx + b, e - b, n * int64_t(sizeof(float)) > NT_BYTES,
                [&](int64_t i, int k) { return Simd::sel_gt0(ldk(yb + i, k), ldk(gb + i, k)); });
    }
}
