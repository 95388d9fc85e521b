// Max pooling with its argmax, and its backward (see pool_plane.h for the loops). NumPy
// needs several full passes over an activation for what one loop does here: one
// `maximum` per window offset, then backward finds each first maximum again (an
// `equal`, a `greater`, an `or` and a multiply per offset). These kernels read each
// input once and write each output once.
#include "host_kernels.h"
#include "pool_plane.h"

void max_pool(const float *x, float *out, uint8_t *arg,
              int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
              int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW)
{
    for (int64_t c = 0; c < C; ++c)
        pool_plane_mapped(x + c * H * W * N, out + c * OH * OW * N, arg + c * OH * OW * N,
                          H, W, N, kh, kw, sh, sw, ph, pw, OH, OW, 0, 0.0f, 1.0f, 0.0f);
}

void max_pool_backward(const float *dout, const uint8_t *arg, float *dx,
                       int64_t C, int64_t H, int64_t W, int64_t N, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW)
{
    for (int64_t c = 0; c < C; ++c)
        pool_backward_plane(dout + c * OH * OW * N, arg + c * OH * OW * N, NULL, dx + c * H * W * N,
                            H, W, N, kh, kw, sh, sw, ph, pw, OH, OW);
}
