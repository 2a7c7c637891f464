"""The executor interface and the serial executor; what the process and Dask executors share.

An executor runs :class:`fide.pair_task.PairTask` s and hands back each pair's row as it completes;
:func:`fide.runner.register_pairs` does everything else (resume, the table, failure rows, progress, callbacks),
whichever executor runs the pairs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Protocol

from fide.features import ModalityEncoders
from fide.pair_task import PairTask, process_pair
from fide.pipeline import RegistrationResult
from fide.resources import configure_threads, thread_environment
from fide.results import PairOutcome

__all__ = [
    "Completed",
    "Executor",
    "SerialExecutor",
    "WorkerLost",
    "LOST_TWICE",
    "ClusterError",
    "split_encoders",
    "with_encoders",
    "child_environment",
]

logger = logging.getLogger(__name__)


class WorkerLost(Exception):
    """A pair's worker process ended abruptly (killed, out of memory) on every attempt; the message says so."""


# the reason in the results table of a pair whose worker died on its first try and on its retry
LOST_TWICE = "worker process ended abruptly (killed, e.g. for memory) twice while registering"


class ClusterError(RuntimeError):
    """The run cannot go on: the scheduler is unreachable or went away. Pairs already done are in the table."""


# (index of the task, its row or WorkerLost, its result: None when it failed or was not asked for)
Completed = tuple[int, "PairOutcome | WorkerLost", "RegistrationResult | None"]


class Executor(Protocol):
    """Runs pair tasks: serially here, in worker processes, or on a Dask cluster."""

    def map_pairs(self, tasks: dict[int, PairTask]) -> Iterator[Completed]:
        """Run ``tasks`` (index → task) and yield ``(index, outcome, result)`` in completion order.

        ``outcome`` is the pair's row, or :class:`WorkerLost` when its worker died on every attempt (the caller
        writes the failure row). Raises :class:`ClusterError` when the run cannot go on.
        """
        ...


class SerialExecutor:
    """Every pair in this process, one after the other.

    Args:
        threads: torch threads for the run; None keeps this process's setting.
    """

    def __init__(self, threads: int | None = None):
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads

    def map_pairs(self, tasks: dict[int, PairTask]) -> Iterator[Completed]:
        if self.threads is not None:
            configure_threads(self.threads)
        for index, task in tasks.items():
            yield (index, *process_pair(task))


def split_encoders(
    tasks: dict[int, PairTask],
) -> tuple[ModalityEncoders | None, dict[int, tuple[PairTask, bool]]]:
    """The one encoder module of ``tasks`` (None if none) and each task without it, with whether it had it.

    Remote executors send the encoders to each worker once, not with every task (1.4 MB pickled per pair); the
    worker puts them back into the tasks that had them (:func:`with_encoders`).

    Raises:
        ValueError: the tasks hold more than one encoder module.
    """
    distinct = {id(t.encoders): t.encoders for t in tasks.values() if t.encoders is not None}
    if len(distinct) > 1:
        raise ValueError(f"tasks must share one encoder module, got {len(distinct)}")
    stripped = {index: (replace(task, encoders=None), task.encoders is not None) for index, task in tasks.items()}
    return next(iter(distinct.values()), None), stripped


def with_encoders(task: PairTask, had_encoders: bool, encoders: ModalityEncoders | None) -> PairTask:
    """The task as it was before :func:`split_encoders`, with the worker's own copy of the encoders."""
    return replace(task, encoders=encoders) if had_encoders else task


@contextmanager
def child_environment(threads: int, extra: dict[str, str] | None = None):
    """Thread variables (and ``extra``) for spawned children (read when they import torch), restored afterwards."""
    saved = dict(os.environ)
    os.environ.update({**thread_environment(threads), **(extra or {})})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
