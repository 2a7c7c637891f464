"""Executors: who runs the pairs of :func:`fide.runner.register_pairs`, behind one interface.

* :class:`SerialExecutor`: this process, one pair after the other (the default).
* :class:`ProcessExecutor`: N worker processes on this machine (``--jobs N``).
* ``DaskExecutor`` (:mod:`fide.executors.dask_cluster`): a Dask cluster (``--dask ADDRESS``); needs
  ``pip install 'fide[dask]'``, so it is imported only by :func:`make_executor` when asked for.

Each yields ``(index, outcome, result)`` as pairs complete; the runner keeps all per-pair bookkeeping.
"""

from __future__ import annotations

from .base import LOST_TWICE, ClusterError, Completed, Executor, SerialExecutor, WorkerLost
from .processes import ProcessExecutor

__all__ = [
    "Executor",
    "Completed",
    "SerialExecutor",
    "ProcessExecutor",
    "WorkerLost",
    "ClusterError",
    "LOST_TWICE",
    "DASK_MISSING",
    "make_executor",
]

DASK_MISSING = "--dask needs dask.distributed: pip install 'fide[dask]'"


def make_executor(jobs: int = 1, threads: int | None = None, dask: str | None = None) -> Executor:
    """The executor for ``--jobs`` / ``--threads`` / ``--dask``.

    Args:
        jobs: worker processes on this machine; 1 = this process.
        threads: threads in all on this machine (None: this process's setting serially, else
            :func:`fide.resources.available_cpus`).
        dask: a Dask scheduler address or ``local:N``; excludes ``jobs`` > 1.

    Raises:
        ValueError: ``jobs`` or ``threads`` < 1, ``dask`` with ``jobs`` > 1, a bad ``local:N``, or ``dask``
            without dask.distributed installed (the message says how to install it).
    """
    if jobs < 1 or (threads is not None and threads < 1):
        raise ValueError(f"jobs and threads must be >= 1, got jobs={jobs}, threads={threads}")
    if dask is not None:
        if jobs > 1:
            raise ValueError(f"--dask and --jobs exclude each other (Dask workers are the jobs), got --jobs {jobs}")
        try:
            from .dask_cluster import DaskExecutor  # dask only when asked for
        except ImportError as err:
            if (err.name or "").split(".")[0] not in ("dask", "distributed"):
                raise
            raise ValueError(DASK_MISSING) from None
        return DaskExecutor(dask, threads)
    return SerialExecutor(threads) if jobs == 1 else ProcessExecutor(jobs, threads)
