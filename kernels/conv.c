// A stride-1 convolution as a product whose columns are never written: forward and the
// weight's gradient.
//
// im2col's column matrix has a row per tap (ci, i, j), c = (ci*kh + i)*kw + j, and in
// output row oh that row's OW*N values are the padded input's row oh + i of channel ci
// from column j on: in the CHWN layout, OW*N contiguous floats. These kernels read the
// columns there, in place, so they never go to memory and back: on the zoo's small
// layers that copy cost more than the product itself (docs/performance.md). The
// forward kernel reads the unpadded input and skips the taps that would read padding;
// the weight gradient's reads the padded input, xp (C, Hp, Wp, N).
//   w         : (Cout, K) with K = C*kh*kw, contiguous
//   out, g    : (Cout, OH, OW*N): the output, the output's gradient
// They multiply and add in 8-float vectors (GCC/Clang vector extensions, one AVX
// register; SSE pairs or scalars elsewhere), with a tile of accumulators kept in
// registers. These loops want fused multiply-adds (docs/performance.md), so this
// file alone is compiled by GCC to contract a * b + c into one; the other files' kernels
// keep NumPy's roundings. (Clang ignores the pragma and, by default, contracts within a
// statement in every kernel.)
#include <string.h>

#include "host_kernels.h"

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
