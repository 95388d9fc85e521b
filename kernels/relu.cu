// ReLU's backward, one launch: dx = 0 where y <= 0, else g (PyTorch's threshold_backward;
// a NaN output passes its gradient on). As array operations (a comparison, a zero, a
// where) it is three launches and a boolean temporary.
//
//   g, y, dx : n elements each, in the same memory order (the backend passes views in
//              which all three are contiguous)
//
// 32-bit indices, a grid-stride loop, and no #include, as in im2col.cu.

template <typename T>
__device__ void relu_backward_flat(const T* __restrict__ g, const T* __restrict__ y,
                                   T* __restrict__ dx, unsigned n)
{
    const unsigned step = blockDim.x * gridDim.x;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        dx[i] = y[i] <= T(0) ? T(0) : g[i];
}

// One C entry point per dtype: the names the backend looks up ("relu_backward_float32", ...).
#define RELU_ENTRY(SUFFIX, T)                                                                \
    extern "C" __global__ void relu_backward_##SUFFIX(const T* __restrict__ g,               \
                                                      const T* __restrict__ y,               \
                                                      T* __restrict__ dx, unsigned n)        \
    {                                                                                        \
        relu_backward_flat<T>(g, y, dx, n);                                                  \
    }

RELU_ENTRY(float32, float)
RELU_ENTRY(float64, double)
