"""Threads for merging: a pool of one worker per core, ordered results, and allocator settings.

The streaming merge (:mod:`mergebench.merging.engine`) and the search's in-memory grid
(:mod:`mergebench.search.grid_merge`) both merge tensors on every core at once: a small pool
reads and merges the next tensors while the caller takes the finished ones in order, with
torch's own intra-op threads set to one meanwhile so the two kinds of parallelism do not fight.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

if TYPE_CHECKING:
    from mergebench.merging.api import MergeContext

T = TypeVar("T")
R = TypeVar("R")


def worker_count(context: "MergeContext") -> int:
    return max(1, context.threads or os.cpu_count() or 1)


def ordered_map(pool: ThreadPoolExecutor | None, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``map(fn, items)`` on the pool, at most ``window`` items in flight, results in input order."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    iterator = iter(items)
    for item in iterator:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break
    while pending:
        future = pending.popleft()
        for item in iterator:
            pending.append(pool.submit(fn, item))
            break
        yield future.result()


@contextlib.contextmanager
def merge_threads(context: "MergeContext") -> Iterator[ThreadPoolExecutor | None]:
    """A pool of one worker per core (none for one), torch's intra-op threads at one meanwhile."""
    import torch

    workers = worker_count(context)
    if workers == 1:
        yield None
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="mergebench-merge") as pool:
            yield pool
    finally:
        torch.set_num_threads(before)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks up to 32 MB for reuse instead of unmapping them.

    A merge allocates and frees the same tensor-sized buffers thousands of times; by default
    glibc returns each large block to the kernel and the next allocation page-faults it back in,
    which made fresh allocations ~10x slower than the arithmetic on them. No effect elsewhere.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: the largest value glibc accepts
        libc.mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass
