"""Process-wide tuning applied by every entry point (CLI, API factory, Celery worker)."""

from __future__ import annotations

import ctypes
import gc
import os

#: glibc's mallopt() parameter for the number of malloc arenas.
_M_ARENA_MAX = -8
#: Arenas per process unless ``MALLOC_ARENA_MAX`` says otherwise.
MALLOC_ARENAS = 2


def tune_process() -> None:
    """Everything below, for an entry point to call once before it starts threads."""
    limit_malloc_arenas()
    tune_gc()


def limit_malloc_arenas() -> None:
    """Bound glibc's malloc arenas (``MALLOC_ARENA_MAX``, default here 2).

    glibc gives each thread that allocates concurrently an arena of its own, up to eight per
    core, and an arena keeps what was freed in it. An API process runs its blocking work on a
    pool of threads, so a burst of large reads (a statement with 10,000 endorsements folded
    while pages are served) leaves tens of megabytes stranded across arenas. Python's own small
    objects do not use malloc's arenas, so two are plenty. The variable is also exported, so
    the processes this one starts (uvicorn and Celery workers) read it when they start; a value
    set by the operator wins.
    """
    os.environ.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))
    try:
        arenas = int(os.environ["MALLOC_ARENA_MAX"])
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):  # not a number, or not glibc
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_ARENA_MAX, arenas)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a service that allocates many short-lived rows.

    CPython's default first threshold (700 allocations) makes reading the log spend more time
    collecting than decoding: each page of events triggers dozens of collections that walk the
    page again. Everything allocated until now (imports, settings) is frozen out of the
    collector's view, and young collections run every 50,000 allocations instead.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
