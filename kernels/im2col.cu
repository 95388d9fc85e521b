// im2col for batch-innermost activations.
//
//   x    : contiguous (C, H, W, N)            -- the unpadded input
//   cols : contiguous (C, kh, kw, OH, OW, N)  -- one row per (c, i, j), as base.py lays it out
//
// cols[c, i, j, oh, ow, n] = x[c, oh*sh - ph + i, ow*sw - pw + j, n], or 0 where that
// pixel lies in the padding. One thread per column element, with n the fastest-varying
// index, so neighbouring threads read neighbouring x and write neighbouring cols: both
// sides coalesce. Reading the padding as zero here saves the padded copy of x that the
// generic path makes.
//
// Indices are 32-bit: the backend sends only arrays of fewer than 2^31 elements here.
// A grid-stride loop lets the launch cap its grid and still cover any size.
// No #include on purpose: the file compiles as it is under NVRTC (cupy.RawModule) and
// `nvcc -ptx` alike.

template <typename T>
__device__ void im2col_chwn(const T* __restrict__ x, T* __restrict__ cols,
                            int C, int H, int W, int N, int kh, int kw,
                            int sh, int sw, int ph, int pw, int OH, int OW)
{
    const unsigned total = (unsigned)C * kh * kw * OH * OW * N;
    const unsigned step = blockDim.x * gridDim.x;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
        unsigned rest = idx;
        const int n = rest % N;   rest /= N;
        const int ow = rest % OW; rest /= OW;
        const int oh = rest % OH; rest /= OH;
        const int j = rest % kw;  rest /= kw;
        const int i = rest % kh;
        const int c = rest / kh;
        const int y = oh * sh - ph + i;
        const int xx = ow * sw - pw + j;
        const bool inside = y >= 0 && y < H && xx >= 0 && xx < W;
        cols[idx] = inside ? x[((c * H + y) * W + xx) * N + n] : T(0);
    }
}

// One C entry point per dtype: the names the backend looks up ("im2col_float32", ...).
#define IM2COL_ENTRY(NAME, T)                                                            \
    extern "C" __global__ void NAME(const T* __restrict__ x, T* __restrict__ cols,      \
                                    int C, int H, int W, int N, int kh, int kw,          \
                                    int sh, int sw, int ph, int pw, int OH, int OW)      \
    {                                                                                    \
        im2col_chwn<T>(x, cols, C, H, W, N, kh, kw, sh, sw, ph, pw, OH, OW);             \
    }

IM2COL_ENTRY(im2col_float32, float)
IM2COL_ENTRY(im2col_float64, double)
