"""Host memory kept for reuse between the steps of a jitted computation on
XLA:CPU.

XLA:CPU places an executable's temporaries (the activations a training step
keeps for its backward pass, their gradients, the optimizer's updates) in
one block, allocated at each call and freed at its end. glibc serves a block
over its mmap threshold (32 MiB at most) with a fresh mapping, so every step
of a model whose temporaries take hundreds of MiB pays one page fault per
4 KiB touched, and the kernel zeroes every page again. Two settings keep that
memory in the process instead:

* :data:`COMPILER_OPTIONS`: split the temporaries into heaps of at most
  :data:`HEAP_BYTES` each (a single larger array still gets its own), so
  that every allocation is one glibc can serve from its arenas;
* :func:`retain_freed_memory`: glibc's mmap threshold at its largest and its
  trim threshold out of reach, so that what a step frees stays in the arenas
  for the next step (the process keeps its peak footprint, as a caching
  allocator does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

import jax

#: The largest heap of temporaries an executable gets (bytes).
HEAP_BYTES = 16 << 20

#: XLA compiler options for executables run once per step on CPU.
COMPILER_OPTIONS = {"xla_multiheap_size_constraint_per_heap": HEAP_BYTES}

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it takes.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20
_TRIM_THRESHOLD = (1 << 31) - 1
_TOP_PAD = 64 << 20  # a thread arena's heap size: a heap freed whole is kept


def compiler_options() -> dict | None:
    """:data:`COMPILER_OPTIONS` on the CPU backend, else ``None`` (other
    backends have allocators of their own)."""
    return dict(COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None


def is_glibc() -> bool:
    """Whether this process runs on glibc (Linux with the GNU C library)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@functools.cache
def retain_freed_memory() -> bool:
    """Sets glibc's mmap threshold to 32 MiB (its largest), its trim
    threshold to 2 GiB and its top pad to 64 MiB (so that a thread arena's
    heap freed whole is kept), for the whole process, once; returns whether
    it could (``False`` where the C library is not glibc)."""
    if not is_glibc():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD))
    return all([bool(libc.mallopt(parameter, value)) for parameter, value in settings])
