// The NumPy backend's C kernels: the one declaration of every function the library
// exports. backends/host_kernels.py compiles the kernels/*.c files into one library on
// first use (with the system's C compiler; without one, the generic NumPy path runs)
// and reads this file to type its calls, so the Python side lists no signatures: it
// holds only prototypes, one per kernel, in the C types that loader knows (const float *,
// float *, const uint8_t *, uint8_t *, double *, int64_t, double, int). Every .c file
// includes it, so the compiler checks each definition against its prototype.
//
// Layout and conventions, as in the CUDA kernels (max_pool.cu):
//   x, dx     : contiguous (C, H, W, N) float32, batch innermost
//   out, dout : contiguous (C, OH, OW, N)
//   arg       : contiguous (C, OH, OW, N) uint8, the offset i*kw + j of each window's
//               FIRST maximum in row-major order (PyTorch's tie rule)
// A call takes a block of C channels (of rows, of output rows or of columns); the
// backend's threads each call it on their own block (ctypes releases the GIL for the
// call). float32 only: the engine's default dtype; other dtypes take the generic path.
// Built without -ffast-math: NaN must compare as NaN.
#ifndef MINITORCH_CNN_HOST_KERNELS_H
#define MINITORCH_CNN_HOST_KERNELS_H

#include <stdint.h>

// max_pool.c: max pooling with its argmax, and its backward
void max_pool(const float *x, float *out, uint8_t *arg,
              int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
              int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW);
void max_pool_backward(const float *dout, const uint8_t *arg, float *dx,
                       int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW);

// relu.c: ReLU and its backward
void relu(const float *x, float *y, int64_t count);
void relu_backward(const float *g, const float *y, float *dx, int64_t count);

// col2im.c: the adjoint of im2col, added into a padded image
void col2im_add(const float *cols, float *dx,
                int64_t C, int64_t kh, int64_t kw, int64_t OH, int64_t OW, int64_t N,
                int64_t sh, int64_t sw, int64_t rows, int64_t W,
                int64_t cols_c, int64_t cols_i, int64_t cols_j, int64_t cols_oh,
                int64_t dx_c, int64_t dx_y);

// batch_norm.c: batch normalisation, and fused with the ReLU and the max pool after it
void batch_norm(const float *x, float *out, float *mean, float *var, float *inv_std,
                const float *weight, const float *shift, int64_t channels, int64_t count,
                double eps, int relu);
void batch_norm_backward(const float *g, const float *x, const float *mean,
                         const float *inv_std, const float *weight, float *gx,
                         float *g_xhat, float *g_sum, int64_t channels, int64_t count,
                         const float *y);
void batch_norm_relu_pool(const float *x, float *pooled, uint8_t *arg,
                          float *mean, float *var, float *inv_std, const float *weight, const float *shift,
                          int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                          int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW, double eps);
void scale_shift_relu_pool(const float *x, float *pooled, uint8_t *arg, const float *scale, const float *shift,
                           int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                           int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW);
void batch_norm_relu_pool_backward(const float *dout, const uint8_t *arg, const float *pooled, const float *x,
                                   const float *mean, const float *inv_std, const float *weight, float *gx,
                                   float *g_xhat, float *g_sum,
                                   int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                                   int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW);

// conv.c: a small stride-1 convolution and its weight gradient, columns read in place
void conv_forward(const float *x, const float *w, const float *bias, float *out,
                  int64_t C, int64_t H, int64_t W, int64_t N, int64_t Cout, int64_t kh, int64_t kw,
                  int64_t ph, int64_t pw, int64_t OH, int64_t OW, int64_t oh0, int64_t oh1);
void conv_weight_grad(const float *xp, const float *g, double *dw, double *db,
                      int64_t C, int64_t Hp, int64_t Wp, int64_t N, int64_t Cout, int64_t kh, int64_t kw,
                      int64_t OH, int64_t OW, int64_t c0, int64_t c1);

#endif
