// Batch normalisation, forward and backward, alone or followed by a ReLU; and a
// BatchNorm, a ReLU and a max pool (bn-cnn's, VGG's) as one kernel each way, so that the
// full-size activation between the three never goes to memory (the pool's plane loops
// are max_pool.c's, from pool_plane.h).
#include <math.h>

#include "host_kernels.h"
#include "pool_plane.h"

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
// The same arithmetic as the kernels above and max_pool's one after the other, so the
// same numbers, but the full-size activation between them never goes to memory: forward
// maps each value as it pools it and writes only the pooled output and its argmax;
// backward makes each channel's gradient through the pool and the ReLU in gx's row, in
// cache. x, gx: (C, H, W, N); pooled, arg, dout: (C, OH, OW, N).
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
