// CPU kernels of the NumPy backend (backends/host_kernels.py compiles this file with
// the system's C compiler on first use; without one, the generic NumPy path runs).
//
// NumPy needs several full passes over an activation for what one loop does here:
// max pooling with its argmax (NumPy: one `maximum` per window offset, then backward
// finds each first maximum again: an `equal`, a `greater`, an `or` and a multiply per
// offset), and ReLU's backward (a comparison, a boolean array, and a float-by-bool
// multiply). These kernels read each input once and write each output once.
//
// Layout and conventions, as in the CUDA kernels (maxpool.cu):
//   x, dx     : contiguous (C, H, W, N) float32, batch innermost
//   out, dout : contiguous (C, OH, OW, N)
//   arg       : contiguous (C, OH, OW, N) uint8, the offset i*kw + j of each window's
//               FIRST maximum in row-major order (PyTorch's tie rule)
// A call takes a block of C channels; the backend's threads each call it on their own
// block (ctypes releases the GIL for the call). float32 only: the engine's default
// dtype; other dtypes take the generic path. Built without -ffast-math: NaN must
// compare as NaN.
#include <stdint.h>
#include <string.h>

// Window maxima and argmax. Padding reads as -inf, which never beats a value: the
// running maximum starts at -inf with offset 0 (the first element, padding or not, as
// the generic path's first maximum over its -inf-padded windows), and an element
// replaces it when strictly greater or NaN (`v != v`), so a NaN propagates as in
// PyTorch. The inner loop runs over the N samples of one pixel: contiguous, branch-free.
void max_pool(const float *x, float *out, uint8_t *arg,
              int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
              int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW)
{
    for (int64_t c = 0; c < C; ++c) {
        const float *plane = x + c * H * W * N;
        for (int64_t oh = 0; oh < OH; ++oh) {
            for (int64_t ow = 0; ow < OW; ++ow) {
                float *best = out + ((c * OH + oh) * OW + ow) * N;
                uint8_t *best_k = arg + ((c * OH + oh) * OW + ow) * N;
                for (int64_t n = 0; n < N; ++n) {
                    best[n] = -__builtin_inff();
                    best_k[n] = 0;
                }
                for (int64_t i = 0; i < kh; ++i) {
                    const int64_t y = oh * sh - ph + i;
                    if (y < 0 || y >= H)
                        continue;
                    for (int64_t j = 0; j < kw; ++j) {
                        const int64_t xx = ow * sw - pw + j;
                        if (xx < 0 || xx >= W)
                            continue;
                        const float *v = plane + (y * W + xx) * N;
                        const uint8_t k = (uint8_t)(i * kw + j);
                        for (int64_t n = 0; n < N; ++n) {
                            const int take = (v[n] > best[n]) | (v[n] != v[n]);
                            best[n] = take ? v[n] : best[n];
                            best_k[n] = take ? k : best_k[n];
                        }
                    }
                }
            }
        }
    }
}

// Each window's gradient to its argmax. Window offsets are visited in ascending order,
// each over every window, so an input element under overlapping windows sums its
// shares in the generic path's order (both give bitwise the same sums).
void max_pool_backward(const float *dout, const uint8_t *arg, float *dx,
                       int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW)
{
    memset(dx, 0, (size_t)(C * H * W * N) * sizeof(float));
    for (int64_t c = 0; c < C; ++c) {
        float *plane = dx + c * H * W * N;
        for (int64_t i = 0; i < kh; ++i) {
            for (int64_t j = 0; j < kw; ++j) {
                const uint8_t k = (uint8_t)(i * kw + j);
                for (int64_t oh = 0; oh < OH; ++oh) {
                    const int64_t y = oh * sh - ph + i;
                    if (y < 0 || y >= H)
                        continue;
                    for (int64_t ow = 0; ow < OW; ++ow) {
                        const int64_t xx = ow * sw - pw + j;
                        if (xx < 0 || xx >= W)
                            continue;
                        const int64_t o = ((c * OH + oh) * OW + ow) * N;
                        const float *g = dout + o;
                        const uint8_t *a = arg + o;
                        float *d = plane + (y * W + xx) * N;
                        for (int64_t n = 0; n < N; ++n)
                            d[n] += a[n] == k ? g[n] : 0.0f;
                    }
                }
            }
        }
    }
}

// ReLU's gradient from its output y: g where y > 0, else 0 (0 also where g is inf or
// NaN, as PyTorch's threshold_backward), over `count` elements in memory order.
void relu_backward(const float *g, const float *y, float *dx, int64_t count)
{
    for (int64_t i = 0; i < count; ++i)
        dx[i] = y[i] > 0.0f ? g[i] : 0.0f;
}
