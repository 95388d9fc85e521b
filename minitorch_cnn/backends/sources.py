"""Where the kernel sources of ``kernels/`` are found: CUDA (``*.cu``, compiled by the
CuPy backend) and C (``*.c`` and their headers, compiled for the NumPy backend)."""
import os
import sysconfig
from pathlib import Path


def kernel_source_dirs():
    """Where the sources can be: the source checkout (which an editable install uses),
    then the data folders a wheel installs them to (``share/minitorch_cnn/kernels``
    under the environment's or the user's data path)."""
    share = Path("share", "minitorch_cnn", "kernels")
    return (Path(__file__).resolve().parents[2] / "kernels",
            Path(sysconfig.get_path("data")) / share,
            Path(sysconfig.get_path("data", f"{os.name}_user")) / share)


def kernel_source_path(filename):
    """The path of ``kernels/<filename>`` in the first folder that has it."""
    dirs = kernel_source_dirs()
    for folder in dirs:
        path = folder / filename
        if path.is_file():
            return path
    raise FileNotFoundError(f"kernel source {filename!r} not found; looked in "
                            + ", ".join(str(d) for d in dirs))


def read_kernel_source(filename):
    """The text of ``kernels/<filename>`` from the first folder that has it."""
    return kernel_source_path(filename).read_text(encoding="utf-8")
