"""Pairs in worker processes side by side on this machine (``fide register --jobs N``).

Why processes: most of a pair's work is many small tensor operations that one thread keeps busy, so N processes
with T/N threads each use T cores better than one process with T threads (issue 15: 1.5x the throughput on 2 cores).

Each worker is a fresh ``spawn`` process (safe with CUDA and with torch's thread pools) that sets its thread count
and seeds exactly as ``fide register`` does, receives the encoders once, then runs
:func:`fide.pair_task.process_pair` on one pair at a time. A pair's result depends only on its inputs, the config and
the seed (every random choice draws from generators seeded by ``cfg.seed``), so the fields equal a single
process's at the same thread count; tests compare them bit for bit. A worker that dies (killed for memory, say)
costs the pairs it held one retry in a new pool; a second death is reported as :class:`WorkerLost`.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from fide.features import ModalityEncoders
from fide.logs import configure_logging
from fide.pair_task import PairTask, process_pair
from fide.reproducibility import seed_everything
from fide.resources import available_cpus, configure_threads

from .base import LOST_TWICE, Completed, WorkerLost, child_environment, split_encoders, with_encoders

__all__ = ["ProcessExecutor"]

logger = logging.getLogger(__name__)

# the worker process's own encoders, set once by its initializer (in the parent this stays empty)
_WORKER_ENCODERS: dict[str, ModalityEncoders | None] = {}


def _init_worker(threads: int, seed: int, log_level: int, encoders: ModalityEncoders | None, device) -> None:
    configure_threads(threads)
    seed_everything(seed)  # the commands' own set-up, so results match
    configure_logging(verbose=log_level <= logging.DEBUG)
    _WORKER_ENCODERS["encoders"] = encoders.to(device) if encoders is not None and device is not None else encoders


def _run(task: PairTask, had_encoders: bool):
    return process_pair(with_encoders(task, had_encoders, _WORKER_ENCODERS.get("encoders")))


class ProcessExecutor:
    """``jobs`` worker processes with ``max(1, threads // jobs)`` torch threads each.

    Args:
        jobs: worker processes (>= 1).
        threads: threads in all; None = :func:`fide.resources.available_cpus`.

    Raises:
        ValueError: ``jobs`` or ``threads`` < 1.
    """

    def __init__(self, jobs: int, threads: int | None = None):
        if jobs < 1 or (threads is not None and threads < 1):
            raise ValueError(f"jobs and threads must be >= 1, got jobs={jobs}, threads={threads}")
        self.jobs = jobs
        self.per_worker = max(1, (threads or available_cpus()) // jobs)

    def map_pairs(self, tasks: dict[int, PairTask]) -> Iterator[Completed]:
        if not tasks:
            return
        first = next(iter(tasks.values()))
        encoders, stripped = split_encoders(tasks)
        if first.device is not None and torch.device(first.device).type == "cuda":
            logger.info("%d workers share the GPU", self.jobs)
        encoders = copy.deepcopy(encoders).cpu() if encoders is not None else None  # pickled once per worker
        level = logging.getLogger("fide").getEffectiveLevel()
        initargs = (self.per_worker, first.cfg.seed, level, encoders, first.device)
        pending = list(stripped.items())
        retried: set[int] = set()
        context = multiprocessing.get_context("spawn")
        logger.info("%d worker processes, %d threads each", self.jobs, self.per_worker)
        with child_environment(self.per_worker):
            while pending:
                broken: list[tuple[int, tuple[PairTask, bool]]] = []
                with ProcessPoolExecutor(
                    self.jobs, mp_context=context, initializer=_init_worker, initargs=initargs
                ) as pool:
                    running: dict[Future, tuple[int, tuple[PairTask, bool]]] = {}
                    try:
                        while (pending or running) and not broken:
                            while pending and len(running) < self.jobs:  # a window of `jobs`: a crash touches these
                                index, item = pending.pop(0)
                                running[pool.submit(_run, *item)] = (index, item)
                            done, _ = wait(running, return_when=FIRST_COMPLETED)
                            for future in done:
                                index, item = running.pop(future)
                                try:
                                    outcome, result = future.result()
                                except BrokenProcessPool:
                                    broken.append((index, item))
                                    continue
                                yield index, outcome, result
                    except BaseException:
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
                    broken.extend(running.values())
                for index, item in broken:
                    if index in retried:
                        yield index, WorkerLost(LOST_TWICE), None
                    else:
                        retried.add(index)
                        pending.insert(0, (index, item))
                if broken:
                    logger.warning("a worker process ended abruptly; %d pairs retried in a new pool", len(broken))
