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
#include <math.h>
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

// Adjoint of im2col: add columns (C, kh, kw, OH, OW, N) into a padded image dx, where
// window (oh, ow) covers rows oh*sh.. and columns ow*sw.. of dx. A gather: each pixel
// of the first `rows` rows adds the values of the windows over it, in ascending window
// offset i*kw + j, the order of the generic path's passes (both give bitwise the same
// sums), straight into dx (so blocks of rows may be added one after another). Strides
// are in elements; a window's OW*N values and a row's W*N values are contiguous.
void col2im_add(const float *restrict cols, float *restrict dx,
                int64_t C, int64_t kh, int64_t kw, int64_t OH, int64_t OW, int64_t N,
                int64_t sh, int64_t sw, int64_t rows, int64_t W,
                int64_t cols_c, int64_t cols_i, int64_t cols_j, int64_t cols_oh,
                int64_t dx_c, int64_t dx_y)
{
    for (int64_t c = 0; c < C; ++c) {
        for (int64_t y = 0; y < rows; ++y) {
            for (int64_t x = 0; x < W; ++x) {
                float *d = dx + c * dx_c + y * dx_y + x * N;
                for (int64_t i = 0; i < kh; ++i) {
                    const int64_t ys = y - i;  // the window's first row, if it starts at a stride
                    if (ys < 0 || ys % sh || ys / sh >= OH)
                        continue;
                    for (int64_t j = 0; j < kw; ++j) {
                        const int64_t xs = x - j;
                        if (xs < 0 || xs % sw || xs / sw >= OW)
                            continue;
                        const float *src = cols + c * cols_c + i * cols_i + j * cols_j
                                           + (ys / sh) * cols_oh + (xs / sw) * N;
                        for (int64_t n = 0; n < N; ++n)
                            d[n] += src[n];
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

// ---- batch normalisation over rows: channel c's values are x[c*count .. (c+1)*count) ----
// Sums are kept in LANES double accumulators, one per position modulo LANES: each lane is
// its own running sum, so the compiler vectorises the loop without reordering any
// addition (that would need -ffast-math), and double lanes keep the sums of a few
// hundred thousand float32 values exact to float32 precision.
#define LANES 16

static double lane_total(const double *lanes)
{
    double total = 0.0;
    for (int l = 0; l < LANES; ++l)
        total += lanes[l];
    return total;
}

// Batch statistics and the normalised output: mean, biased variance (two-pass, over the
// centered values: exact for any mean), inv_std = 1 / sqrt(var + eps) in float32, and
// out = (x - mean) * (inv_std * weight) + shift. weight may be NULL (no affine scale).
// With `relu`, out is ReLU's output instead (a NaN stays NaN, as np.maximum keeps it).
void batch_norm(const float *x, float *out, float *mean, float *var, float *inv_std,
                const float *weight, const float *shift, int64_t channels, int64_t count,
                double eps, int relu)
{
    for (int64_t c = 0; c < channels; ++c) {
        const float *row = x + c * count;
        float *o = out + c * count;
        const int64_t whole = count - count % LANES;
        double lanes[LANES] = {0};
        for (int64_t i = 0; i < whole; i += LANES)
            for (int l = 0; l < LANES; ++l)
                lanes[l] += row[i + l];
        for (int64_t i = whole; i < count; ++i)
            lanes[0] += row[i];
        const float m = (float)(lane_total(lanes) / (double)count);
        double squares[LANES] = {0};
        for (int64_t i = 0; i < whole; i += LANES)
            for (int l = 0; l < LANES; ++l) {
                const float d = row[i + l] - m;
                squares[l] += (double)d * d;
            }
        for (int64_t i = whole; i < count; ++i) {
            const float d = row[i] - m;
            squares[0] += (double)d * d;
        }
        const float v = (float)(lane_total(squares) / (double)count);
        const float inv = 1.0f / sqrtf(v + (float)eps);
        const float scale = weight ? inv * weight[c] : inv;
        const float b = shift[c];
        if (relu) {
            for (int64_t i = 0; i < count; ++i) {
                const float v = (row[i] - m) * scale + b;
                o[i] = v < 0.0f ? 0.0f : v;
            }
        } else {
            for (int64_t i = 0; i < count; ++i)
                o[i] = (row[i] - m) * scale + b;
        }
        mean[c] = m;
        var[c] = v;
        inv_std[c] = inv;
    }
}

// Its backward, from the output's gradient g and the input x, for batch statistics:
//   g_sum[c]  = sum(g),  g_xhat[c] = sum(g * (x - mean)) * inv_std   (the affine
//   parameters' gradients), and
//   gx = scale * (g - g_sum/count - (x - mean) * inv_std * g_xhat/count).
// With ReLU's output y (not NULL), g is the gradient of y and first passes ReLU's
// backward (y > 0 ? g : 0), made here into gx's row, which stays in cache.
void batch_norm_backward(const float *g, const float *x, const float *mean,
                         const float *inv_std, const float *weight, float *gx,
                         float *g_xhat, float *g_sum, int64_t channels, int64_t count,
                         const float *y)
{
    for (int64_t c = 0; c < channels; ++c) {
        const float *grow = g + c * count, *row = x + c * count;
        if (y) {
            const float *yrow = y + c * count;
            float *masked = gx + c * count;
            for (int64_t i = 0; i < count; ++i)
                masked[i] = yrow[i] > 0.0f ? grow[i] : 0.0f;
            grow = masked;
        }
        float *d = gx + c * count;
        const float m = mean[c], inv = inv_std[c];
        const int64_t whole = count - count % LANES;
        double sums[LANES] = {0}, dots[LANES] = {0};
        for (int64_t i = 0; i < whole; i += LANES)
            for (int l = 0; l < LANES; ++l) {
                sums[l] += grow[i + l];
                dots[l] += (double)grow[i + l] * (row[i + l] - m);
            }
        for (int64_t i = whole; i < count; ++i) {
            sums[0] += grow[i];
            dots[0] += (double)grow[i] * (row[i] - m);
        }
        const float s = (float)lane_total(sums);
        const float gh = (float)lane_total(dots) * inv;
        const float scale = weight ? inv * weight[c] : inv;
        const float g_mean = s / (float)count;
        const float factor = -inv * gh / (float)count;
        for (int64_t i = 0; i < count; ++i)
            d[i] = ((row[i] - m) * factor + grow[i] - g_mean) * scale;
        g_sum[c] = s;
        g_xhat[c] = gh;
    }
}
