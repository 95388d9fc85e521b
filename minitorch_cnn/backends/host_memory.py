"""Keep freed host memory in the heap for the next training step.

A training step allocates the same large arrays every step: im2col columns,
activations and gradients of megabytes each. glibc's malloc serves such blocks with
fresh mmap()s and trims its heap when they are freed, so every step page-faults its
whole working set in again (docs/performance.md: half of a small step's time). Raising
malloc's mmap and trim thresholds keeps the blocks in the heap, so each step reuses the
last one's memory: buffer reuse across steps, without a pool of our own to get wrong.
The NumPy backend applies it when it is first built, never at import.

Set MINITORCH_MALLOC_TUNING=0 to leave malloc as it is. Elsewhere than glibc this
does nothing.
"""
import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap (glibc accepts at most HEAP_MAX/2).
MMAP_THRESHOLD = 256 << 20
# Freed memory up to this much stays in the process for reuse.
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory():
    """Apply the thresholds once; return True where malloc took them."""
    if os.environ.get("MINITORCH_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
