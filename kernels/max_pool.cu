// Max pooling on batch-innermost activations: forward with argmax, and its backward.
//
//   x, dx     : contiguous (C, H, W, N)
//   out, dout : contiguous (C, OH, OW, N)
//   arg       : contiguous (C, OH, OW, N) uint8, the offset i*kw + j of the window's
//               FIRST maximum in row-major order (PyTorch's tie rule): the routing the
//               backend keeps between forward and backward
//
// Forward: the padding reads as `pad_value` (-inf, passed in by the host so that no
// math header is needed); the window's first element starts the running maximum, and a
// later element replaces it only when strictly greater, or when it is NaN (`v != v`),
// so a NaN propagates as in PyTorch's kernels.
// Backward is a gather, like col2im: one thread per input element adds dout over the
// windows whose argmax points at it, in ascending window offset (the order of the
// generic path in base.py, so both give bitwise the same sums), with no atomics.
//
// One thread per element with n the fastest-varying index (coalesced), 32-bit indices
// (the backend sends only arrays of fewer than 2^31 elements), a grid-stride loop, and
// no #include, as in im2col.cu.

template <typename T>
__device__ void max_pool_chwn(const T* __restrict__ x, T* __restrict__ out,
                              unsigned char* __restrict__ arg,
                              int C, int H, int W, int N, int kh, int kw,
                              int sh, int sw, int ph, int pw, int OH, int OW, T pad_value)
{
    const unsigned total = (unsigned)C * OH * OW * N;
    const unsigned step = blockDim.x * gridDim.x;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
        unsigned rest = idx;
        const int n = rest % N;   rest /= N;
        const int ow = rest % OW; rest /= OW;
        const int oh = rest % OH;
        const int c = rest / OH;
        const T* plane = x + c * H * W * N + n;   // pixel (y, x) of this sample is plane[(y*W + x)*N]
        T best = pad_value;
        int best_k = 0;
        for (int i = 0; i < kh; ++i) {
            const int y = oh * sh - ph + i;
            for (int j = 0; j < kw; ++j) {
                const int xx = ow * sw - pw + j;
                const int k = i * kw + j;
                const T v = (y >= 0 && y < H && xx >= 0 && xx < W) ? plane[(y * W + xx) * N] : pad_value;
                if (k == 0 || v > best || v != v) {
                    best = v;
                    best_k = k;
                }
            }
        }
        out[idx] = best;
        arg[idx] = (unsigned char)best_k;
    }
}

template <typename T>
__device__ void max_pool_backward_chwn(const T* __restrict__ dout,
                                       const unsigned char* __restrict__ arg,
                                       T* __restrict__ dx,
                                       int C, int H, int W, int N, int kh, int kw,
                                       int sh, int sw, int ph, int pw, int OH, int OW)
{
    const unsigned total = (unsigned)C * H * W * N;
    const unsigned step = blockDim.x * gridDim.x;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
        unsigned rest = idx;
        const int n = rest % N;  rest /= N;
        const int xx = rest % W; rest /= W;
        const int y = rest % H;
        const int c = rest / H;
        const int yp = y + ph;   // this pixel in the padded image
        const int xp = xx + pw;
        // the windows (oh, ow) that contain it; see col2im.cu
        // from the last window that starts at or before it, back while it stays inside:
        // one division per axis, no lower bound computed
        const int oh_hi = yp / sh < OH - 1 ? yp / sh : OH - 1;
        const int ow_hi = xp / sw < OW - 1 ? xp / sw : OW - 1;
        T sum = T(0);
        for (int oh = oh_hi, i = yp - oh_hi * sh; oh >= 0 && i < kh; --oh, i += sh) {      // i ascends
            for (int ow = ow_hi, j = xp - ow_hi * sw; ow >= 0 && j < kw; --ow, j += sw) {  // and j
                const int o = ((c * OH + oh) * OW + ow) * N + n;
                if (arg[o] == i * kw + j)
                    sum += dout[o];
            }
        }
        dx[idx] = sum;
    }
}

// One C entry point per kernel and dtype: the names the backend looks up.
#define MAX_POOL_ENTRIES(SUFFIX, T)                                                          \
    extern "C" __global__ void max_pool_##SUFFIX(                                            \
        const T* __restrict__ x, T* __restrict__ out, unsigned char* __restrict__ arg,      \
        int C, int H, int W, int N, int kh, int kw, int sh, int sw, int ph, int pw,         \
        int OH, int OW, T pad_value)                                                        \
    {                                                                                        \
        max_pool_chwn<T>(x, out, arg, C, H, W, N, kh, kw, sh, sw, ph, pw, OH, OW, pad_value); \
    }                                                                                        \
    extern "C" __global__ void max_pool_backward_##SUFFIX(                                   \
        const T* __restrict__ dout, const unsigned char* __restrict__ arg,                  \
        T* __restrict__ dx,                                                                  \
        int C, int H, int W, int N, int kh, int kw, int sh, int sw, int ph, int pw,         \
        int OH, int OW)                                                                      \
    {                                                                                        \
        max_pool_backward_chwn<T>(dout, arg, dx, C, H, W, N, kh, kw, sh, sw, ph, pw, OH, OW); \
    }

MAX_POOL_ENTRIES(float32, float)
MAX_POOL_ENTRIES(float64, double)
