// col2im, the adjoint of im2col, as a gather: no atomics, and deterministic.
//
//   cols : contiguous (C, kh, kw, OH, OW, N)  -- column gradients
//   dx   : contiguous (C, H, W, N)            -- gradient of the unpadded input
//
// One thread per input element (c, y, x, n) sums every column entry that im2col copied
// from it. In the padded image that pixel sits at (yp, xp) = (y + ph, x + pw), and
// window (oh, ow) covers it when oh*sh <= yp < oh*sh + kh (likewise for columns), so
// the outputs that read it are the oh from oh_hi = min(yp / sh, OH - 1) down while the
// kernel offset i = yp - oh*sh < kh (likewise ow, j = xp - ow*sw). n is the fastest-varying index, so
// neighbouring threads touch neighbouring addresses on both sides.
//
// The terms are added in ascending (i, j), the order of the generic path in base.py
// (for i: for j: dx += cols[:, i, j]), so both give bitwise the same sums.
//
// 32-bit indices (the backend sends only arrays of fewer than 2^31 elements), a
// grid-stride loop, and no #include, as in im2col.cu.

template <typename T>
__device__ void col2im_chwn(const T* __restrict__ cols, T* __restrict__ dx,
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
        const int yp = y + ph;
        const int xp = xx + pw;
        // from the last window that starts at or before it, back while it stays inside:
        // one division per axis, no lower bound computed
        const int oh_hi = yp / sh < OH - 1 ? yp / sh : OH - 1;
        const int ow_hi = xp / sw < OW - 1 ? xp / sw : OW - 1;
        T sum = T(0);
        for (int oh = oh_hi, i = yp - oh_hi * sh; oh >= 0 && i < kh; --oh, i += sh) {      // i ascends
            for (int ow = ow_hi, j = xp - ow_hi * sw; ow >= 0 && j < kw; --ow, j += sw) {  // j ascends
                sum += cols[((((c * kh + i) * kw + j) * OH + oh) * OW + ow) * N + n];
            }
        }
        dx[idx] = sum;
    }
}

// One C entry point per dtype: the names the backend looks up ("col2im_float32", ...).
#define COL2IM_ENTRY(NAME, T)                                                            \
    extern "C" __global__ void NAME(const T* __restrict__ cols, T* __restrict__ dx,     \
                                    int C, int H, int W, int N, int kh, int kw,          \
                                    int sh, int sw, int ph, int pw, int OH, int OW)      \
    {                                                                                    \
        col2im_chwn<T>(cols, dx, C, H, W, N, kh, kw, sh, sw, ph, pw, OH, OW);            \
    }

COL2IM_ENTRY(col2im_float32, float)
COL2IM_ENTRY(col2im_float64, double)
