"""The C allocator's policy for CPU sampling: freed tensor memory is kept for the next model call.

glibc's malloc serves a request above its mmap threshold (128 KiB at start, raised dynamically up to 32 MiB
as such blocks are freed) with a fresh mmap and gives it back on free, and it trims the top of its heap once
more than twice that threshold lies free there. A batched UNet call on the CPU allocates and frees
activations of a few MiB each, so every call took its memory back from the kernel page by page: measured on
the embedded model (1 thread, 32 rows), 7000 minor page faults a call and about a third of the call's CPU
time, against 50-100 faults with the policy below (bench/batch_throughput.py prints both). One image at a
time allocates below the threshold and saw no faults either way.

The policy is the one PyTorch's CPU tuning guide reaches with jemalloc or tcmalloc, set here without a
dependency: a fixed mmap threshold at glibc's own maximum (32 MiB: larger blocks, SDXL's, are mapped as
before) and a trim threshold of 1 GiB, so up to that much freed memory stays with the process between calls
(its resident size stays near the largest call's peak rather than falling back after each). It changes which
addresses tensors get, never a value computed in them.

`TNR_LAB_MALLOC=default` leaves glibc's policy alone. Anything but glibc (musl, macOS, Windows) is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "TNR_LAB_MALLOC"
M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: mallopt refuses more
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set the policy once per process (later calls return the first answer); True where it was set."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "").strip().lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl has mallopt as a stub
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
