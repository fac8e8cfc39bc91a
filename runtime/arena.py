"""The process's CPU memory: one arena shared by every session, and freed heap handed back.

One process-wide CPU memory arena grows by what is asked and is shared by every session.

onnxruntime gives each session its own CPU arena, grown in powers of two by default. A
tokenizer holds several sessions (encoder, quantizer, decoder, scales), so their arenas would
each keep a peak's worth of rounded-up memory. One shared arena that extends by the size
requested (kSameAsRequested) keeps less at the same speed; turning the arena off keeps less
still but runs much slower. The peak-RSS figures are in benchmarks/results.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading

import onnxruntime as ort

_lock = threading.Lock()
_registered: bool | None = None  # None: not tried yet; False: this onnxruntime refused it

ARENA_EXTEND_SAME_AS_REQUESTED = 1


def _register() -> bool:
    global _registered
    with _lock:
        if _registered is None:
            try:
                info = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                # max memory 0 (no cap), extend by request, default chunk sizes (-1)
                cfg = ort.OrtArenaCfg(0, ARENA_EXTEND_SAME_AS_REQUESTED, -1, -1)
                ort.create_and_register_allocator(info, cfg)
                _registered = True
            except (AttributeError, RuntimeError, TypeError, ValueError):
                # an onnxruntime build without it: sessions keep their own arenas
                _registered = False
        return _registered


def use_shared_arena(options: ort.SessionOptions) -> bool:
    """Make sessions made with ``options`` allocate CPU memory from the shared arena.

    Returns False (and changes nothing) where this onnxruntime cannot register it.
    """
    if not _register():
        return False
    options.add_session_config_entry("session.use_env_allocators", "1")
    return True


_LIBC = ctypes.util.find_library("c")


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise; a no-op elsewhere).

    Creating a session frees as much as it keeps: the weights read, then repacked into the
    provider's layout, and the graph transforms' copies. glibc holds that freed memory at the
    top of the process's peak; the tokenizer calls this after each session it creates, and the
    demo after a large request."""
    if _LIBC is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(_LIBC).malloc_trim(0)
