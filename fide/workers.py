"""Registering pairs in worker processes side by side (``fide register --jobs N``).

Why processes: most of a pair's work is many small tensor operations that one thread keeps busy, so N processes
with T/N threads each use T cores better than one process with T threads (issue 15: 1.5x the throughput on 2 cores).

Each worker is a fresh ``spawn`` process (safe with CUDA and with torch's thread pools) that sets its thread count
and seeds exactly as ``fide register`` does, then runs :func:`fide.pair_task.process_pair` on one pair at a time. The
parent keeps the progress bar, the results table and the callbacks. A pair's result depends only on its inputs, the
config and the seed (every random choice draws from generators seeded by ``cfg.seed``), so the fields equal a
single process's at the same thread count; tests compare them bit for bit. A worker that dies (killed for memory,
say) fails the pairs it held; the others go on in a new pool.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace

import torch

from fide.logs import configure_logging
from fide.pair_task import PairTask, identity_fallback, process_pair
from fide.reproducibility import seed_everything
from fide.resources import configure_threads, thread_environment
from fide.results import PairOutcome

__all__ = ["run_in_workers"]

logger = logging.getLogger(__name__)


def _init_worker(threads: int, seed: int, log_level: int) -> None:
    configure_threads(threads)
    seed_everything(seed)  # the commands' own set-up, so results match
    configure_logging(verbose=log_level <= logging.DEBUG)


@contextmanager
def _child_environment(threads: int):
    """Thread variables for the spawned children (read when they import torch), restored afterwards."""
    saved = dict(os.environ)
    os.environ.update(thread_environment(threads))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_in_workers(
    tasks: dict[int, PairTask], jobs: int, threads: int
) -> Iterator[tuple[int, PairOutcome, object | None]]:
    """Run ``tasks`` in ``jobs`` worker processes with ``max(1, threads // jobs)`` threads each.

    Args:
        tasks: index → task (indices are handed back with the outcomes).
        jobs: worker processes (>= 1).
        threads: threads in all.

    Yields:
        ``(index, outcome, result)`` in completion order; ``result`` is None when the pair failed or the task did
        not ask for it.
    """
    per_worker = max(1, threads // jobs)
    seed = next(iter(tasks.values())).cfg.seed if tasks else 0
    encoders = {id(t.encoders): t.encoders for t in tasks.values() if t.encoders is not None}
    if any(torch.device(t.device).type == "cuda" for t in tasks.values() if t.device is not None):
        logger.info("%d workers share the GPU", jobs)
    cpu_copies = {key: copy.deepcopy(module).cpu() for key, module in encoders.items()}
    pending = [
        (index, replace(task, encoders=cpu_copies[id(task.encoders)]) if task.encoders is not None else task)
        for index, task in tasks.items()
    ]
    retried: set[int] = set()
    context = multiprocessing.get_context("spawn")
    initargs = (per_worker, seed, logging.getLogger("fide").getEffectiveLevel())
    logger.info("%d worker processes, %d threads each", jobs, per_worker)
    with _child_environment(per_worker):
        while pending:
            with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
                running: dict[Future, tuple[int, PairTask]] = {}
                broken: list[tuple[int, PairTask]] = []
                try:
                    while (pending or running) and not broken:
                        while pending and len(running) < jobs:  # a window of `jobs`: a crash touches only these
                            index, task = pending.pop(0)
                            running[pool.submit(process_pair, task)] = (index, task)
                        done, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in done:
                            index, task = running.pop(future)
                            try:
                                outcome, result = future.result()
                            except BrokenProcessPool:
                                broken.append((index, task))
                                continue
                            yield index, outcome, result
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                broken.extend(running.values())
            for index, task in broken:
                if index in retried:
                    note = identity_fallback(task.pair, task.target)
                    reason = "worker process ended abruptly (killed, e.g. for memory) twice while registering"
                    logger.error("%s failed: %s (%s)", task.pair.name, reason, note)
                    yield index, PairOutcome(task.pair.name, "failed", float("nan"), float("nan"), message=reason), None
                else:
                    retried.add(index)
                    pending.insert(0, (index, task))
            if broken:
                logger.warning("a worker process ended abruptly; %d pairs retried in a new pool", len(broken))
