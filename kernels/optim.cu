// Optimizer steps, one launch per parameter: SGD (momentum, dampening, Nesterov, weight
// decay) and Adam (weight decay), PyTorch's update rules as minitorch_cnn/optim.py writes
// them, in the same order of operations (so the CPU run of this source through the g++
// shim matches optim.py's NumPy bodies to rounding; the GPU may contract a multiply-add).
// As separate array operations these steps are 3-5 (SGD) and 13 (Adam) launches per
// parameter, each reading and writing the whole parameter.
//
//   p, g, buf / m, v : contiguous arrays of n elements (p, buf, m, v updated in place)
//   scalars          : the step's hyper-parameters, in the parameter's dtype; the
//                      host computes Adam's bias corrections for the step
//
// Indices are 32-bit and the loop grid-stride, as in the other kernels.
// No #include on purpose: the file compiles as it is under NVRTC and `nvcc -ptx` alike.

template <typename T>
__device__ void sgd_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf,
                         unsigned n, T lr, T momentum, T one_minus_dampening, T weight_decay,
                         int nesterov, int first)
{
    const unsigned step = blockDim.x * gridDim.x;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        T d = g[i];
        if (weight_decay != T(0)) d = d + weight_decay * p[i];
        if (momentum != T(0)) {
            // the first step's buffer is the gradient itself (PyTorch's rule)
            const T b = first ? d : buf[i] * momentum + one_minus_dampening * d;  // x 1 is exact
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        p[i] -= lr * d;
    }
}

template <typename T>
__device__ void adam_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                          T* __restrict__ v, unsigned n, T one_minus_beta1, T beta2,
                          T one_minus_beta2, T step_size, T bias2_sqrt, T eps, T weight_decay)
{
    const unsigned step = blockDim.x * gridDim.x;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        T grad = g[i];
        if (weight_decay != T(0)) grad = grad + weight_decay * p[i];
        const T mi = m[i] + one_minus_beta1 * (grad - m[i]);  // PyTorch's lerp form
        T vi = v[i] * beta2;
        vi += one_minus_beta2 * grad * grad;
        m[i] = mi;
        v[i] = vi;
        const T denom = sqrt(vi) / bias2_sqrt + eps;
        p[i] -= step_size * (mi / denom);
    }
}

// One C entry point per dtype: the names the backend looks up ("sgd_step_float32", ...).
#define OPTIM_ENTRIES(SUFFIX, T)                                                                \
    extern "C" __global__ void sgd_step_##SUFFIX(T* __restrict__ p, const T* __restrict__ g,   \
                                                 T* __restrict__ buf, unsigned n, T lr,         \
                                                 T momentum, T one_minus_dampening,             \
                                                 T weight_decay,                                \
                                                 int nesterov, int first)                       \
    {                                                                                           \
        sgd_step<T>(p, g, buf, n, lr, momentum, one_minus_dampening, weight_decay, nesterov,    \
                    first);                                                                     \
    }                                                                                           \
    extern "C" __global__ void adam_step_##SUFFIX(T* __restrict__ p, const T* __restrict__ g,  \
                                                  T* __restrict__ m, T* __restrict__ v,         \
                                                  unsigned n, T one_minus_beta1, T beta2,       \
                                                  T one_minus_beta2, T step_size,               \
                                                  T bias2_sqrt, T eps, T weight_decay)          \
    {                                                                                           \
        adam_step<T>(p, g, m, v, n, one_minus_beta1, beta2, one_minus_beta2, step_size,         \
                     bias2_sqrt, eps, weight_decay);                                            \
    }

OPTIM_ENTRIES(float32, float)
OPTIM_ENTRIES(float64, double)
