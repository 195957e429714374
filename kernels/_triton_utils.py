"""Optional-Triton plumbing shared by the kernel files.

Every kernel file must import on a machine without Triton or without a GPU, so Triton is imported here once, in a
guarded way, and the kernel files define their ``@triton.jit`` functions only when ``HAS_TRITON`` is true.
"""
import os

try:  # Triton is optional: CPU-only installs and macOS have none.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ['HAS_TRITON', 'triton', 'tl', 'triton_interpreting', 'use_triton_for', 'cdiv', 'next_power_of_2']


def triton_interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def use_triton_for(*tensors) -> bool:
    """Whether the automatic dispatch should launch Triton for these tensors.

    Triton runs on CUDA tensors; on CPU tensors it runs only in the interpreter, which callers must request with
    ``backend='triton'`` because it is orders of magnitude slower than the vectorised PyTorch path.
    """
    return HAS_TRITON and all(t.is_cuda for t in tensors if t is not None)


# Host-side integer helpers. ``triton.cdiv`` and ``triton.next_power_of_2`` are ``@triton.jit`` functions in recent
# Triton releases, whose Python call costs microseconds per launch; these are plain Python.
def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b for positive integers."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()
