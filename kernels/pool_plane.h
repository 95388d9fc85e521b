// The plane loops of max pooling, shared by max_pool.c and the fused BatchNorm + ReLU +
// max pool kernels of batch_norm.c: one channel's window maxima and argmax, forward,
// and its gradient to each argmax, backward. Layout as in host_kernels.h.
#ifndef MINITORCH_CNN_POOL_PLANE_H
#define MINITORCH_CNN_POOL_PLANE_H

#include <stdint.h>
#include <string.h>

// Window maxima and argmax of one channel's plane (H, W, N) into (OH, OW, N). Padding
// reads as -inf, which never beats a value: the running maximum starts at -inf with
// offset 0 (the first element, padding or not, as the generic path's first maximum over
// its -inf-padded windows), and an element replaces it when strictly greater or NaN
// (`v != v`), so a NaN propagates as in PyTorch. The inner loop runs over the N samples
// of one pixel: contiguous, branch-free. With `normalise`, the plane is a BatchNorm's
// input and each value is first mapped as batch_norm maps it, then through a ReLU: the
// same numbers as pooling that map's output, which is never stored.
static inline __attribute__((always_inline)) void pool_plane_mapped(
    const float *plane, float *out, uint8_t *arg, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW,
    int normalise, float mean, float scale, float shift)
{
    // The offsets are tracked in 32-bit lanes, as wide as the floats compared, and
    // narrowed to uint8 once per window: a select on bytes from a float comparison
    // costs the vectorised loop a repacking per step.
    float mapped[normalise ? N : 1];
    int32_t offset[N];
    for (int64_t oh = 0; oh < OH; ++oh) {
        for (int64_t ow = 0; ow < OW; ++ow) {
            float *best = out + (oh * OW + ow) * N;
            for (int64_t n = 0; n < N; ++n) {
                best[n] = -__builtin_inff();
                offset[n] = 0;
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
                    const int32_t k = (int32_t)(i * kw + j);
                    if (normalise) {  // two loops, each of which vectorises
                        for (int64_t n = 0; n < N; ++n) {
                            const float m = (v[n] - mean) * scale + shift;
                            mapped[n] = m < 0.0f ? 0.0f : m;
                        }
                        v = mapped;
                    }
                    for (int64_t n = 0; n < N; ++n) {
                        const int take = (v[n] > best[n]) | (v[n] != v[n]);
                        best[n] = take ? v[n] : best[n];
                        offset[n] = take ? k : offset[n];
                    }
                }
            }
            uint8_t *best_k = arg + (oh * OW + ow) * N;
            for (int64_t n = 0; n < N; ++n)
                best_k[n] = (uint8_t)offset[n];
        }
    }
}

// Each window's gradient to its argmax, in one channel's plane dx (H, W, N). Window
// offsets are visited in ascending order, each over every window, so an input element
// under overlapping windows sums its shares in the generic path's order (both give
// bitwise the same sums). With `passed` (the pool's output, not NULL) the pool followed
// a ReLU: a window's gradient goes on only where its maximum, the ReLU's output at the
// argmax, is not <= 0 (ReLU's backward, y <= 0 ? 0 : g, taken before the pool's).
static inline void pool_backward_plane(const float *dout, const uint8_t *arg, const float *passed, float *dx,
                                       int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW)
{
    memset(dx, 0, (size_t)(H * W * N) * sizeof(float));
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
                    const int64_t o = (oh * OW + ow) * N;
                    const float *g = dout + o;
                    const uint8_t *a = arg + o;
                    float *d = dx + (y * W + xx) * N;
                    if (passed) {
                        const float *p = passed + o;
                        for (int64_t n = 0; n < N; ++n)
                            d[n] += a[n] == k && !(p[n] <= 0.0f) ? g[n] : 0.0f;
                    } else {
                        for (int64_t n = 0; n < N; ++n)
                            d[n] += a[n] == k ? g[n] : 0.0f;
                    }
                }
            }
        }
    }
}

#endif
