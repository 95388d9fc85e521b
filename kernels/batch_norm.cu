// Batch normalisation over (C, count) rows (each channel's values in one row), forward
// and backward, each one launch: the reference bodies of backends/reference.py
// (batch_norm, batch_norm_backward) are a dozen array operations each, several of them
// full-size float64 temporaries. One block per channel (a grid-stride loop over
// channels): its threads stride along the row and meet in a shared-memory sum.
//
// As in the reference, per-channel sums accumulate in double (a convolution's weight
// gradient through a BatchNorm is a near-total cancellation); the forward's normalised
// value is computed in double and rounded once, the backward's xhat in the data's type.
//
//   forward : rows, weight (read if has_weight), shift -> out, mean, var, inv_std;
//             relu: out = max(out, 0), a NaN staying NaN
//   backward: g, rows (read if has_rows), mean, inv_std, weight (if has_weight),
//             relu_out (if has_relu: g passes where relu_out > 0) -> gx, g_xhat, g_sum
//
// The block size is MT_THREADS (the backend's THREADS_PER_BLOCK), a power of two.
// No #include on purpose: the file compiles as it is under NVRTC and `nvcc -ptx` alike.
#define MT_THREADS 256

__device__ double block_sum(double value, double* partial)
{
    partial[threadIdx.x] = value;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    const double total = partial[0];
    __syncthreads();  // every thread has read it before the next sum overwrites it
    return total;
}

template <typename T>
__device__ void batch_norm_rows(const T* __restrict__ rows, const T* __restrict__ weight,
                                const T* __restrict__ shift, T* __restrict__ out,
                                T* __restrict__ mean_out, T* __restrict__ var_out,
                                T* __restrict__ inv_std_out, int C, int count, double eps,
                                int has_weight, int relu)
{
    __shared__ double partial[MT_THREADS];
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        const T* x = rows + (long long)c * count;
        T* y = out + (long long)c * count;
        double sum = 0;
        for (int i = threadIdx.x; i < count; i += blockDim.x) sum += x[i];
        const double mean = block_sum(sum, partial) / count;
        double squares = 0;
        for (int i = threadIdx.x; i < count; i += blockDim.x) {
            const double d = x[i] - mean;
            squares += d * d;
        }
        const double var = block_sum(squares, partial) / count;  // two-pass: centered
        const double inv_std = 1.0 / sqrt(var + eps);
        const double scale = has_weight ? inv_std * weight[c] : inv_std;
        const double b = shift[c];
        for (int i = threadIdx.x; i < count; i += blockDim.x) {
            const double v = (x[i] - mean) * scale + b;
            y[i] = T(relu && v < 0 ? 0.0 : v);
        }
        if (threadIdx.x == 0) {
            mean_out[c] = T(mean);
            var_out[c] = T(var);
            inv_std_out[c] = T(inv_std);
        }
    }
}

template <typename T>
__device__ void batch_norm_rows_backward(const T* __restrict__ g, const T* __restrict__ rows,
                                         const T* __restrict__ mean, const T* __restrict__ inv_std,
                                         const T* __restrict__ weight, const T* __restrict__ relu_out,
                                         T* __restrict__ gx, T* __restrict__ g_xhat_out,
                                         T* __restrict__ g_sum_out, int C, int count, int use_batch,
                                         int has_rows, int has_weight, int has_relu)
{
    __shared__ double partial[MT_THREADS];
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        const long long base = (long long)c * count;
        const T m = mean[c], istd = inv_std[c];
        const T scale = has_weight ? T(istd * weight[c]) : istd;
        double sum = 0, dot = 0;
        for (int i = threadIdx.x; i < count; i += blockDim.x) {
            const T gi = has_relu && !(relu_out[base + i] > T(0)) ? T(0) : g[base + i];
            sum += gi;
            if (has_rows) dot += T(gi * T(T(rows[base + i] - m) * istd));
        }
        const double g_sum = block_sum(sum, partial);
        const double g_xhat = has_rows ? block_sum(dot, partial) : 0.0;
        for (int i = threadIdx.x; i < count; i += blockDim.x) {
            const T gi = has_relu && !(relu_out[base + i] > T(0)) ? T(0) : g[base + i];
            if (use_batch) {
                const T xhat = T(T(rows[base + i] - m) * istd);
                gx[base + i] = T(double(scale) * (gi - g_sum / count - xhat * g_xhat / count));
            } else {
                gx[base + i] = gi * scale;
            }
        }
        if (threadIdx.x == 0) {
            g_sum_out[c] = T(g_sum);
            if (has_rows) g_xhat_out[c] = T(g_xhat);
        }
    }
}

// One C entry point per dtype: the names the backend looks up ("batch_norm_float32", ...).
#define BATCH_NORM_ENTRIES(SUFFIX, T)                                                              \
    extern "C" __global__ void batch_norm_##SUFFIX(                                               \
        const T* __restrict__ rows, const T* __restrict__ weight, const T* __restrict__ shift,    \
        T* __restrict__ out, T* __restrict__ mean, T* __restrict__ var, T* __restrict__ inv_std,  \
        int C, int count, double eps, int has_weight, int relu)                                   \
    {                                                                                              \
        batch_norm_rows<T>(rows, weight, shift, out, mean, var, inv_std, C, count, eps,           \
                           has_weight, relu);                                                      \
    }                                                                                              \
    extern "C" __global__ void batch_norm_backward_##SUFFIX(                                      \
        const T* __restrict__ g, const T* __restrict__ rows, const T* __restrict__ mean,          \
        const T* __restrict__ inv_std, const T* __restrict__ weight,                              \
        const T* __restrict__ relu_out, T* __restrict__ gx, T* __restrict__ g_xhat,               \
        T* __restrict__ g_sum, int C, int count, int use_batch, int has_rows, int has_weight,     \
        int has_relu)                                                                              \
    {                                                                                              \
        batch_norm_rows_backward<T>(g, rows, mean, inv_std, weight, relu_out, gx, g_xhat, g_sum,  \
                                    C, count, use_batch, has_rows, has_weight, has_relu);         \
    }

BATCH_NORM_ENTRIES(float32, float)
BATCH_NORM_ENTRIES(float64, double)
