// col2im, im2col's adjoint, as one gather per pixel (the backend adds blocks of rows of
// a convolution's input gradient with it).
#include "host_kernels.h"

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
