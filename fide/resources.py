"""The machine's share for this process: usable CPU cores (affinity, cgroup quota), thread set-up, memory budget.

A process that starts one thread per *machine* core oversubscribes wherever it gets fewer: in a container limited
to 4 of 64 cores, or beside a second fide process. torch's OpenMP threads also spin while they wait for work, so
oversubscribed threads burn the cores the other process needs. fide therefore sizes its thread pool from what the
process may really use, and its commands bound the spinning (``GOMP_SPINCOUNT``, set in :mod:`fide.cli`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import sys
from pathlib import Path

import torch

__all__ = [
    "available_cpus",
    "cgroup_cpu_limit",
    "configure_threads",
    "thread_environment",
    "available_memory_bytes",
    "estimate_pair_memory_bytes",
    "glibc",
    "release_free_heap",
]

logger = logging.getLogger(__name__)

# measured with benchmarks/memory.py (docs/operations.md, large images): ~470 MiB of imports + ~200 B per fixed pixel
_BASE_BYTES = 500 * 2**20
# split of the ~200 B per pixel measured at fixed = moving size: the fixed grid carries the fields and NMI terms
_BYTES_PER_FIXED_PIXEL = 140
_BYTES_PER_MOVING_PIXEL = 60

# thread variables of the numeric libraries torch may use; set for worker processes before they import torch
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (quota / period), or None when unlimited or unknown.

    Reads cgroup v2 ``cpu.max`` (``"max 100000"`` or ``"200000 100000"``), else v1 ``cpu/cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us`` (quota -1 = unlimited).
    """
    root = Path(root)
    text = _read(root / "cpu.max")
    if text:
        quota, _, period = text.partition(" ")
        if quota != "max" and period:
            try:
                return int(quota) / int(period)
            except ValueError:
                return None
        return None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            try:
                quota_us, period_us = int(quota), int(period)
            except ValueError:
                return None
            return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def thread_environment(threads: int) -> dict[str, str]:
    """Environment for a child process that should use ``threads`` threads (set before it imports torch)."""
    return {name: str(threads) for name in _THREAD_VARIABLES}


def configure_threads(threads: int | None = None) -> int:
    """Size torch's thread pools for this process and export the same count to its child processes.

    Args:
        threads: intra-op threads; None = ``OMP_NUM_THREADS`` when the user set it, else :func:`available_cpus`.

    Returns:
        The thread count set.

    Raises:
        ValueError: ``threads`` < 1.
    """
    if threads is None:
        requested = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(requested) if requested.isdigit() and int(requested) > 0 else available_cpus()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:  # the inter-op pool can be sized only before its first use
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    os.environ.update(thread_environment(threads))
    logger.debug("%d threads (%d cores available)", threads, available_cpus())
    return threads


def _cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    for file in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        text = _read(file)
        if text and text != "max":
            try:
                limit = int(text)
            except ValueError:
                continue
            if limit < 1 << 60:  # v1 reports "unlimited" as a huge number
                return limit
    return None


def available_memory_bytes() -> int | None:
    """Memory this process can still take: ``MemAvailable`` of /proc/meminfo, capped by the cgroup limit.

    None when neither is known (not on Linux).
    """
    available = None
    text = _read(Path("/proc/meminfo")) or ""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    limit = _cgroup_memory_limit()
    if limit is not None:
        used = _read(Path("/sys/fs/cgroup/memory.current"))
        used = used or _read(Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"))
        room = limit - int(used) if used and used.isdigit() else limit
        available = room if available is None else min(available, room)
    return available


def estimate_pair_memory_bytes(fixed_hw: tuple[int, int], moving_hw: tuple[int, int]) -> int:
    """Peak resident memory of registering one pair on the CPU with the default config, bytes (an estimate).

    Linear in the pixel counts (benchmarks/memory.py: 862 MiB at 1024², 1437 MiB at 2048², 3794 MiB at 4096² for
    equal sizes), with the imports' ~0.5 GiB on top.
    """
    fixed_px = fixed_hw[0] * fixed_hw[1]
    moving_px = moving_hw[0] * moving_hw[1]
    return _BASE_BYTES + _BYTES_PER_FIXED_PIXEL * fixed_px + _BYTES_PER_MOVING_PIXEL * moving_px


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux (its malloc tunables and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - musl and others have no malloc_trim
    except (OSError, AttributeError):
        return None
    return libc


def release_free_heap() -> None:
    """Give the heap memory freed so far back to the operating system (glibc's ``malloc_trim(0)``), after each pair.

    glibc keeps freed blocks resident for reuse, and how much depends on where the last pair's blocks happened to
    lie: a process registering the same 834 px pair again and again kept its ~172 MiB in use constant to 0.2 MiB
    but held 120-240 MiB of freed heap besides, a different amount after every pair, so its resident memory swung
    by ~100 MiB and a run looked as if it grew (issue 27, benchmarks/soak.py). Trimming took 9-32 ms a pair.
    """
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)
