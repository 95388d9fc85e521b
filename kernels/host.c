// CPU kernels of the NumPy backend (backends/host_kernels.py compiles this file with
// the system's C compiler on first use; without one, the generic NumPy path runs).
//
// NumPy needs several full passes over an activation for what one loop does here:
// max pooling with its argmax (NumPy: one `maximum` per window offset, then backward
// finds each first maximum again: an `equal`, a `greater`, an `or` and a multiply per
// offset), and ReLU (a maximum against a broadcast row of zeros) and its backward (a
// comparison, a boolean array, and a float-by-bool multiply). These kernels read each input once and write each output once. A
// BatchNorm followed by a ReLU and a max pool (bn-cnn's, VGG's) runs as one kernel each
// way, so that the full-size activation between the three never goes to memory.
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

void max_pool(const float *x, float *out, uint8_t *arg,
              int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
              int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW)
{
    for (int64_t c = 0; c < C; ++c)
        pool_plane_mapped(x + c * H * W * N, out + c * OH * OW * N, arg + c * OH * OW * N,
                          H, W, N, kh, kw, sh, sw, ph, pw, OH, OW, 0, 0.0f, 1.0f, 0.0f);
}

// Each window's gradient to its argmax, in one channel's plane dx (H, W, N). Window
// offsets are visited in ascending order, each over every window, so an input element
// under overlapping windows sums its shares in the generic path's order (both give
// bitwise the same sums). With `passed` (the pool's output, not NULL) the pool followed
// a ReLU: a window's gradient goes on only where its maximum, the ReLU's output at the
// argmax, is not <= 0 (ReLU's backward, y <= 0 ? 0 : g, taken before the pool's).
static void pool_backward_plane(const float *dout, const uint8_t *arg, const float *passed, float *dx,
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

void max_pool_backward(const float *dout, const uint8_t *arg, float *dx,
                       int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW)
{
    for (int64_t c = 0; c < C; ++c)
        pool_backward_plane(dout + c * OH * OW * N, arg + c * OH * OW * N, NULL, dx + c * H * W * N,
                            H, W, N, kh, kw, sh, sw, ph, pw, OH, OW);
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

// ReLU: y = x where x >= 0 or x is NaN, else 0 (as np.maximum(x, 0) and PyTorch's
// relu), over `count` elements in memory order. NumPy's maximum against a broadcast
// zero row runs 1.5-1.8x slower on the zoo's activations (measured).
void relu(const float *x, float *y, int64_t count)
{
    for (int64_t i = 0; i < count; ++i)
        y[i] = x[i] < 0.0f ? 0.0f : x[i];
}

// ReLU's gradient from its output y: 0 where y <= 0 (also where g is inf or NaN), else
// g, a NaN output included (PyTorch's threshold_backward), over `count` elements in
// memory order.
void relu_backward(const float *g, const float *y, float *dx, int64_t count)
{
    for (int64_t i = 0; i < count; ++i)
        dx[i] = y[i] <= 0.0f ? 0.0f : g[i];
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

// One channel's batch statistics: mean, biased variance (two-pass, over the centered
// values: exact for any mean) and inv_std = 1 / sqrt(var + eps) in float32.
static void row_statistics(const float *row, int64_t count, double eps, float *mean, float *var, float *inv_std)
{
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
    *mean = m;
    *var = v;
    *inv_std = 1.0f / sqrtf(v + (float)eps);
}

// The statistics and the normalised output out = (x - mean) * (inv_std * weight) + shift
// (weight may be NULL: no affine scale). With `relu`, out is ReLU's output instead (a
// NaN stays NaN, as np.maximum keeps it).
void batch_norm(const float *x, float *out, float *mean, float *var, float *inv_std,
                const float *weight, const float *shift, int64_t channels, int64_t count,
                double eps, int relu)
{
    for (int64_t c = 0; c < channels; ++c) {
        const float *row = x + c * count;
        float *o = out + c * count;
        row_statistics(row, count, eps, mean + c, var + c, inv_std + c);
        const float m = mean[c], scale = weight ? inv_std[c] * weight[c] : inv_std[c], b = shift[c];
        if (relu) {
            for (int64_t i = 0; i < count; ++i) {
                const float v = (row[i] - m) * scale + b;
                o[i] = v < 0.0f ? 0.0f : v;
            }
        } else {
            for (int64_t i = 0; i < count; ++i)
                o[i] = (row[i] - m) * scale + b;
        }
    }
}

// One channel's backward, from the output's gradient g and the input x, for batch
// statistics:
//   g_sum  = sum(g),  g_xhat = sum(g * (x - mean)) * inv_std   (the affine parameters'
//   gradients), and
//   d = scale * (g - g_sum/count - (x - mean) * inv_std * g_xhat/count).
// d may be g itself: each element of g is read before d's is written.
static void normalise_row_backward(const float *g, const float *row, float *d, int64_t count, float m,
                                   float inv, const float *weight, float *g_xhat, float *g_sum)
{
    const int64_t whole = count - count % LANES;
    double sums[LANES] = {0}, dots[LANES] = {0};
    for (int64_t i = 0; i < whole; i += LANES)
        for (int l = 0; l < LANES; ++l) {
            sums[l] += g[i + l];
            dots[l] += (double)g[i + l] * (row[i + l] - m);
        }
    for (int64_t i = whole; i < count; ++i) {
        sums[0] += g[i];
        dots[0] += (double)g[i] * (row[i] - m);
    }
    const float s = (float)lane_total(sums);
    const float gh = (float)lane_total(dots) * inv;
    const float scale = weight ? inv * *weight : inv;
    const float g_mean = s / (float)count;
    const float factor = -inv * gh / (float)count;
    for (int64_t i = 0; i < count; ++i)
        d[i] = ((row[i] - m) * factor + g[i] - g_mean) * scale;
    *g_sum = s;
    *g_xhat = gh;
}

// With ReLU's output y (not NULL), g is the gradient of y and first passes ReLU's
// backward (y <= 0 ? 0 : g), made here into gx's row, which stays in cache.
void batch_norm_backward(const float *g, const float *x, const float *mean,
                         const float *inv_std, const float *weight, float *gx,
                         float *g_xhat, float *g_sum, int64_t channels, int64_t count,
                         const float *y)
{
    for (int64_t c = 0; c < channels; ++c) {
        const float *grow = g + c * count;
        if (y) {
            const float *yrow = y + c * count;
            float *masked = gx + c * count;
            for (int64_t i = 0; i < count; ++i)
                masked[i] = yrow[i] <= 0.0f ? 0.0f : grow[i];
            grow = masked;
        }
        normalise_row_backward(grow, x + c * count, gx + c * count, count, mean[c], inv_std[c],
                               weight ? weight + c : NULL, g_xhat + c, g_sum + c);
    }
}

// ---- a BatchNorm, a ReLU and a max pool as one op (nn.Sequential fuses the three) ----
// The same arithmetic as the kernels above one after the other, so the same numbers, but
// the full-size activation between them never goes to memory: forward maps each value
// as it pools it and writes only the pooled output and its argmax; backward makes each
// channel's gradient through the pool and the ReLU in gx's row, in cache. x, gx:
// (C, H, W, N); pooled, arg, dout: (C, OH, OW, N).
void batch_norm_relu_pool(const float *x, float *pooled, uint8_t *arg,
                          float *mean, float *var, float *inv_std, const float *weight, const float *shift,
                          int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                          int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW, double eps)
{
    const int64_t count = H * W * N, out_count = OH * OW * N;
    for (int64_t c = 0; c < C; ++c) {
        row_statistics(x + c * count, count, eps, mean + c, var + c, inv_std + c);
        pool_plane_mapped(x + c * count, pooled + c * out_count, arg + c * out_count,
                          H, W, N, kh, kw, sh, sw, ph, pw, OH, OW,
                          1, mean[c], weight ? inv_std[c] * weight[c] : inv_std[c], shift[c]);
    }
}

// The same on running statistics (evaluation): each value is mapped as x * scale + shift,
// the form of the generic path and of PyTorch's inference kernel, before the ReLU.
void scale_shift_relu_pool(const float *x, float *pooled, uint8_t *arg, const float *scale, const float *shift,
                           int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                           int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW)
{
    const int64_t count = H * W * N, out_count = OH * OW * N;
    for (int64_t c = 0; c < C; ++c)  // (x - 0) * scale + shift: x * scale + shift, exactly
        pool_plane_mapped(x + c * count, pooled + c * out_count, arg + c * out_count,
                          H, W, N, kh, kw, sh, sw, ph, pw, OH, OW, 1, 0.0f, scale[c], shift[c]);
}

// Its backward, for batch statistics: the gradient through the pool and the ReLU, made
// in gx's row, is overwritten there with the BatchNorm's input gradient.
void batch_norm_relu_pool_backward(const float *dout, const uint8_t *arg, const float *pooled, const float *x,
                                   const float *mean, const float *inv_std, const float *weight, float *gx,
                                   float *g_xhat, float *g_sum,
                                   int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                                   int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW)
{
    const int64_t count = H * W * N, out_count = OH * OW * N;
    for (int64_t c = 0; c < C; ++c) {
        float *row = gx + c * count;
        pool_backward_plane(dout + c * out_count, arg + c * out_count, pooled + c * out_count, row,
                            H, W, N, kh, kw, sh, sw, ph, pw, OH, OW);
        normalise_row_backward(row, x + c * count, row, count, mean[c], inv_std[c],
                               weight ? weight + c : NULL, g_xhat + c, g_sum + c);
    }
}

// ---- a stride-1 convolution as a product whose columns are never written ----
// im2col's column matrix has a row per tap (ci, i, j), c = (ci*kh + i)*kw + j, and in
// output row oh that row's OW*N values are the padded input's row oh + i of channel ci
// from column j on: in the CHWN layout, OW*N contiguous floats. These kernels read the
// columns there, in place, so they never go to memory and back: on the zoo's small
// layers that copy cost more than the product itself (measured: see host.py). The
// forward kernel reads the unpadded input and skips the taps that would read padding;
// the weight gradient's reads the padded input, xp (C, Hp, Wp, N).
//   w         : (Cout, K) with K = C*kh*kw, contiguous
//   out, g    : (Cout, OH, OW*N): the output, the output's gradient
// They multiply and add in 8-float vectors (GCC/Clang vector extensions, one AVX
// register; SSE pairs or scalars elsewhere), with a tile of accumulators kept in
// registers. These loops want fused multiply-adds (1.6x faster, measured), so this
// section alone is compiled by GCC to contract a * b + c into one; the kernels above
// keep NumPy's roundings. (Clang ignores the pragma and, by default, contracts within a
// statement in every kernel.)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

typedef float vec8 __attribute__((vector_size(32)));
#define VEC 8
// Output channels per tile: 6 x 2 accumulators, 2 loads and 1 broadcast fill 15 of the
// 16 AVX registers.
#define TILE_ROWS 6

static inline vec8 load8(const float *p)
{
    vec8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, vec8 v) { memcpy(p, &v, sizeof v); }

static inline vec8 splat8(float x) { return (vec8){x, x, x, x, x, x, x, x}; }

// The first `width` (< 8) floats at p, the rest zeros; and their store.
static inline vec8 load_part(const float *p, int width)
{
    vec8 v = splat8(0.0f);
    for (int l = 0; l < width; ++l)
        v[l] = p[l];
    return v;
}

static inline void store_part(float *p, vec8 v, int width)
{
    for (int l = 0; l < width; ++l)
        p[l] = v[l];
}

static inline float sum8(vec8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// The column rows' addresses in output row 0: column row c of output row oh is at
// rows[c] + oh*Wp*N.
static void column_rows(const float *xp, const float **rows, int64_t C, int64_t Hp, int64_t Wp, int64_t N,
                        int64_t kh, int64_t kw)
{
    for (int64_t ci = 0; ci < C; ++ci)
        for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j)
                rows[(ci * kh + i) * kw + j] = xp + ((ci * Hp + i) * Wp + j) * N;
}

// RT output channels (w's rows, K apart; out's rows, out_c apart) times VN vectors at
// position q of a piece of an output row: bias + the sum over the piece's `count` taps u,
// in order, of w[t][column[u]] * x[offset[u] + q]. The last vector holds `width` (1-8)
// positions, the others all 8.
static inline __attribute__((always_inline)) void forward_tile(
    const float *x, const int64_t *offset, const int64_t *column, int64_t count, int64_t q,
    const float *w, int64_t K, const float *bias, float *out, int64_t out_c, int RT, int VN, int width)
{
    vec8 acc[TILE_ROWS][2];
    for (int t = 0; t < RT; ++t)
        for (int v = 0; v < VN; ++v)
            acc[t][v] = splat8(bias ? bias[t] : 0.0f);
    for (int64_t u = 0; u < count; ++u) {
        const float *src = x + (offset[u] + q), *wc = w + column[u];
        vec8 in[2];
        for (int v = 0; v < VN; ++v)
            in[v] = v == VN - 1 && width < VEC ? load_part(src + v * VEC, width) : load8(src + v * VEC);
        for (int t = 0; t < RT; ++t) {
            const vec8 weight = splat8(wc[t * K]);
            for (int v = 0; v < VN; ++v)
                acc[t][v] += weight * in[v];
        }
    }
    for (int t = 0; t < RT; ++t)
        for (int v = 0; v < VN; ++v) {
            if (v == VN - 1 && width < VEC)
                store_part(out + t * out_c + v * VEC, acc[t][v], width);
            else
                store8(out + t * out_c + v * VEC, acc[t][v]);
        }
}

// Every case a tile's loops must be unrolled for (RT channels left, VN vectors).
#define FORWARD_TILE(VN, WIDTH) switch (rt) { \
    case 6: forward_tile(x, offset, column, count, q, wt, K, bt, o, out_c, 6, VN, WIDTH); break; \
    case 5: forward_tile(x, offset, column, count, q, wt, K, bt, o, out_c, 5, VN, WIDTH); break; \
    case 4: forward_tile(x, offset, column, count, q, wt, K, bt, o, out_c, 4, VN, WIDTH); break; \
    case 3: forward_tile(x, offset, column, count, q, wt, K, bt, o, out_c, 3, VN, WIDTH); break; \
    case 2: forward_tile(x, offset, column, count, q, wt, K, bt, o, out_c, 2, VN, WIDTH); break; \
    default: forward_tile(x, offset, column, count, q, wt, K, bt, o, out_c, 1, VN, WIDTH); break; }

// out[co][oh][ow][n] = bias[co] + sum over the taps (ci, i, j) of w[co][(ci*kh + i)*kw + j] *
// x[ci][oh + i - ph][ow + j - pw][n], in that order, the taps that fall in the padding (zeros)
// left out, for the output rows oh in [oh0, oh1) (bias may be NULL). x: (C, H, W, N),
// unpadded. A row is made in pieces of the same taps: each output column at the left and
// right edges alone, the columns between (whose windows lie wholly inside) as one piece.
void conv_forward(const float *x, const float *w, const float *bias, float *out,
                  int64_t C, int64_t H, int64_t W, int64_t N, int64_t Cout, int64_t kh, int64_t kw,
                  int64_t ph, int64_t pw, int64_t OH, int64_t OW, int64_t oh0, int64_t oh1)
{
    const int64_t K = C * kh * kw, out_c = OH * OW * N;
    int64_t offset[K], column[K];  // the piece's taps: where each reads x (less q), and its weight
    for (int64_t oh = oh0; oh < oh1; ++oh) {
        const int64_t i0 = ph - oh > 0 ? ph - oh : 0, i1 = H + ph - oh < kh ? H + ph - oh : kh;
        for (int64_t ow = 0, end; ow < OW; ow = end) {
            const int64_t j0 = pw - ow > 0 ? pw - ow : 0, j1 = W + pw - ow < kw ? W + pw - ow : kw;
            end = j0 == 0 && j1 == kw ? W + pw - kw + 1 : ow + 1;  // all of the middle
            end = end < OW ? end : OW;
            int64_t count = 0;
            for (int64_t ci = 0; ci < C; ++ci)
                for (int64_t i = i0; i < i1; ++i)
                    for (int64_t j = j0; j < j1; ++j) {
                        offset[count] = ((ci * H + oh + i - ph) * W + j - pw) * N;  // + q: >= 0
                        column[count++] = (ci * kh + i) * kw + j;
                    }
            const int64_t stop = end * N, pairs = stop - (stop - ow * N) % (2 * VEC);
            for (int64_t q = ow * N; q < stop; q += 2 * VEC)
                for (int64_t co = 0; co < Cout; co += TILE_ROWS) {
                    const int rt = Cout - co < TILE_ROWS ? (int)(Cout - co) : TILE_ROWS;
                    const float *wt = w + co * K, *bt = bias ? bias + co : NULL;
                    float *o = out + co * out_c + oh * OW * N + q;
                    if (q < pairs)
                        FORWARD_TILE(2, VEC)
                    else if (stop - q > VEC)
                        FORWARD_TILE(2, (int)(stop - q - VEC))
                    else
                        FORWARD_TILE(1, (int)(stop - q))
                }
        }
    }
}

// RT output channels (g's rows, g_c apart) times RC column rows, over q in [q0, q1) at
// offset `at` of the column rows: dw[t][u] += sum_q g[t][q] * column u at q.
static inline __attribute__((always_inline)) void weight_tile(
    const float *g, int64_t g_c, const float *const *rows, int64_t at, int64_t q0, int64_t q1,
    double *dw, int64_t K, int RT, int RC)
{
    vec8 acc[TILE_ROWS][2];
    for (int t = 0; t < RT; ++t)
        for (int u = 0; u < RC; ++u)
            acc[t][u] = splat8(0.0f);
    const int64_t vectors = q1 - (q1 - q0) % VEC;
    for (int64_t q = q0; q < vectors; q += VEC) {
        vec8 x[2];
        for (int u = 0; u < RC; ++u)
            x[u] = load8(rows[u] + at + q);
        for (int t = 0; t < RT; ++t) {
            const vec8 grad = load8(g + t * g_c + q);
            for (int u = 0; u < RC; ++u)
                acc[t][u] += grad * x[u];
        }
    }
    for (int t = 0; t < RT; ++t)
        for (int u = 0; u < RC; ++u) {
            float s = sum8(acc[t][u]);
            for (int64_t q = vectors; q < q1; ++q)
                s += g[t * g_c + q] * rows[u][at + q];
            dw[t * K + u] += (double)s;
        }
}

#define WEIGHT_TILE(RC) switch (rt) { \
    case 6: weight_tile(gt, g_c, rows + c, at, q0, q1, dwt, K, 6, RC); break; \
    case 5: weight_tile(gt, g_c, rows + c, at, q0, q1, dwt, K, 5, RC); break; \
    case 4: weight_tile(gt, g_c, rows + c, at, q0, q1, dwt, K, 4, RC); break; \
    case 3: weight_tile(gt, g_c, rows + c, at, q0, q1, dwt, K, 3, RC); break; \
    case 2: weight_tile(gt, g_c, rows + c, at, q0, q1, dwt, K, 2, RC); break; \
    default: weight_tile(gt, g_c, rows + c, at, q0, q1, dwt, K, 1, RC); break; }

// Pieces of an output row that every tile takes in turn: 6 channels' share of g (12 KB)
// and the column rows' stay in a core's L1 cache.
#define ROW_PIECE 512

// dw[co][c] = sum over (oh, q) of g[co][oh][q] * column c at (oh, q), for the columns c
// in [c0, c1), every co; with db (not NULL), db[co] = the sum of g[co]. Each piece of
// ROW_PIECE floats of an output row is summed in 8 float lanes, and the pieces, in
// order, in double: through a BatchNorm a weight gradient is a near-total cancellation
// (see batch_norm), which a float32 sum of bn-cnn's 392 pieces per weight would leave
// with relative errors of several 1e-6. Tiles of two columns start at c0, so an even
// c0 always gives a column the same tile, the same instructions (a one-column tile may
// round differently).
void conv_weight_grad(const float *xp, const float *g, double *dw, double *db,
                      int64_t C, int64_t Hp, int64_t Wp, int64_t N, int64_t Cout, int64_t kh, int64_t kw,
                      int64_t OH, int64_t OW, int64_t c0, int64_t c1)
{
    const int64_t K = C * kh * kw, row = OW * N, g_c = OH * row;
    const float *rows[K];
    column_rows(xp, rows, C, Hp, Wp, N, kh, kw);
    for (int64_t co = 0; co < Cout; ++co)
        for (int64_t c = c0; c < c1; ++c)
            dw[co * K + c] = 0.0;
    for (int64_t oh = 0; oh < OH; ++oh) {
        const int64_t at = oh * Wp * N;
        for (int64_t q0 = 0; q0 < row; q0 += ROW_PIECE) {
            const int64_t q1 = q0 + ROW_PIECE < row ? q0 + ROW_PIECE : row;
            for (int64_t co = 0; co < Cout; co += TILE_ROWS) {
                const int rt = Cout - co < TILE_ROWS ? (int)(Cout - co) : TILE_ROWS;
                const float *gt = g + co * g_c + oh * row;
                for (int64_t c = c0; c < c1; c += 2) {
                    double *dwt = dw + co * K + c;
                    if (c1 - c >= 2)
                        WEIGHT_TILE(2)
                    else
                        WEIGHT_TILE(1)
                }
            }
        }
    }
    for (int64_t co = 0; db && co < Cout; ++co) {  // the same pieces, in lanes, then in double
        double total = 0.0;
        for (int64_t q0 = 0; q0 < g_c; q0 += ROW_PIECE) {
            const float *piece = g + co * g_c + q0;
            const int64_t length = g_c - q0 < ROW_PIECE ? g_c - q0 : ROW_PIECE;
            const int64_t vectors = length - length % VEC;
            vec8 acc = splat8(0.0f);
            for (int64_t q = 0; q < vectors; q += VEC)
                acc += load8(piece + q);
            float s = sum8(acc);
            for (int64_t q = vectors; q < length; ++q)
                s += piece[q];
            total += s;
        }
        db[co] = total;
    }
}

#pragma GCC pop_options
