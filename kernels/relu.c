// ReLU and its backward, each one pass: NumPy needs a maximum against a broadcast row
// of zeros forward, and a comparison, a boolean array and a float-by-bool multiply
// backward.
#include "host_kernels.h"

// ReLU: y = x where x >= 0 or x is NaN, else 0 (as np.maximum(x, 0) and PyTorch's
// relu), over `count` elements in memory order. NumPy's maximum against a broadcast
// zero row runs slower (docs/performance.md).
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
