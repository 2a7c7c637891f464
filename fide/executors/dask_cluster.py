"""Pairs on a Dask cluster (``--dask ADDRESS``): one task per pair, the client keeps the table.

* Each task carries the pair's *paths* (shared storage), never its pixels, and runs
  :func:`fide.pair_task.process_pair`, the serial path's code, which writes the field atomically.
* A worker plugin sets each worker up once (also a worker that replaces a dead one): torch threads from the
  worker's own CPU share (:func:`fide.resources.available_cpus` over the Dask threads of the workers on its host;
  ``local:N`` splits ``threads``), the run's seed, and the encoders, shipped once per worker, not with each pair.
  ``local:N`` workers also start with one glibc arena (:data:`ONE_ARENA`), so their memory stays flat.
* Faults: a pair whose worker dies is rerun on another worker by the scheduler; after ``allowed-failures`` deaths
  (1 on ``local:N``; start a scheduler with ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1`` for the same) it
  comes back as :class:`~fide.executors.base.WorkerLost`. A lost scheduler stops the run with
  :class:`~fide.executors.base.ClusterError`; the fields written so far stay, so a rerun resumes.

Imported only when ``--dask`` is given (needs ``pip install 'fide[dask]'``).
"""

from __future__ import annotations

import copy
import logging
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import CancelledError
from contextlib import ExitStack, contextmanager

import dask
from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin, as_completed, get_worker
from distributed.comm import get_address_host

from fide.features import ModalityEncoders
from fide.pair_task import PairTask, one_line, process_pair
from fide.reproducibility import seed_everything
from fide.resources import available_cpus, configure_threads, glibc, thread_environment

from .base import LOST_TWICE, ClusterError, Completed, WorkerLost, child_environment, split_encoders, with_encoders

__all__ = ["DaskExecutor", "LOCAL_CONFIG", "ONE_ARENA"]

logger = logging.getLogger(__name__)

# local:N: one retry per pair after a worker death, and each worker holds only the pair it runs (the default 1.1
# saturation queues a second pair on a 1-thread worker, and a death would count against that pair too)
LOCAL_CONFIG = {
    "distributed.scheduler.allowed-failures": 1,
    "distributed.scheduler.worker-saturation": 1.0,
    # the profiler (100 samples/s per worker) keeps 1000 s of history: memory that grows with the run, never read
    "distributed.worker.profile.enabled": False,
}


class _FideSetup(WorkerPlugin):
    """Once per worker: threads, seed, and the run's encoders (kept here for the tasks, see :func:`_run`)."""

    def __init__(self, name: str, seed: int, threads: int | None, encoders: ModalityEncoders | None, device):
        self.name, self.seed, self.threads, self.encoders, self.device = name, seed, threads, encoders, device

    async def setup(self, worker) -> None:
        configure_threads(self.threads or await _cpu_share(worker))
        seed_everything(self.seed)  # the commands' own set-up, so results match the serial run
        _heap_for_tensors()
        if self.encoders is not None and self.device is not None:
            self.encoders = self.encoders.to(self.device)


async def _cpu_share(worker) -> int:
    """Torch threads for each pair on ``worker``: the cores its host lets it use, over the Dask threads of all
    workers on that host (each runs that many pairs at once; ``dask worker --nworkers 8`` starts 8 processes that
    each see every core, and more threads than cores slow every pair down several times)."""
    host = get_address_host(worker.address)
    try:
        workers = (await worker.scheduler.identity())["workers"].values()
        sharing = sum(int(w["nthreads"]) for w in workers if w.get("host") == host)
    except (OSError, KeyError, TypeError, ValueError):  # an older scheduler: this worker's own threads only
        sharing = 0
    return max(1, available_cpus() // max(sharing, worker.state.nthreads, 1))


# A Dask worker runs each pair in a thread, which allocates from its own glibc arena; malloc_trim frees pages inside
# every arena but shrinks the top chunk of the main arena only, so a thread arena kept up to ~60 MiB of a pair's freed
# memory resident, a different amount after each pair (benchmarks/soak.py: 613-676 MiB). One arena: all of it returns.
ONE_ARENA = {"MALLOC_ARENA_MAX": "1"}

# glibc mallopt parameters, and the largest mmap threshold glibc's own dynamic rule reaches on 64-bit (32 MiB)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -1, -3, 32 * 2**20


def _heap_for_tensors() -> None:
    """Undo Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` (set by its nannies) for this worker process.

    That variable also freezes glibc's mmap threshold at 128 KiB, so every tensor larger than that is mapped and
    unmapped afresh, page faults and all: fide's pairs took 2.3x as long (benchmarks/soak.py, 834 px). The
    thresholds set here are those glibc's dynamic rule would reach itself.
    """
    libc = glibc()  # None where the variable means nothing (not glibc)
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or libc is None:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)


def _run(task: PairTask, had_encoders: bool, setup_name: str):
    setup = get_worker().plugins[setup_name]
    return process_pair(with_encoders(task, had_encoders, setup.encoders))


class DaskExecutor:
    """Pairs as tasks on the Dask scheduler at ``address``, or on ``local:N`` (a local cluster of N processes).

    Args:
        address: ``tcp://host:port`` (or any address ``distributed.Client`` takes), or ``local:N``.
        threads: ``local:N`` only: threads in all, split between the N workers (None:
            :func:`fide.resources.available_cpus`); remote workers use their own CPU share.
        connect_timeout_s: how long to try to reach the scheduler.

    Raises:
        ValueError: ``local:N`` with N < 1, or ``threads`` < 1.
    """

    def __init__(self, address: str, threads: int | None = None, *, connect_timeout_s: float = 30.0):
        self.address, self.local_workers = address, None
        if address.startswith("local:"):
            count = address.removeprefix("local:")
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"--dask local:N needs N >= 1 worker processes, got {address!r}")
            self.local_workers = int(count)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads, self.connect_timeout_s = threads, connect_timeout_s

    @contextmanager
    def _client(self, stack: ExitStack):
        """A client of the scheduler (starting the local cluster for ``local:N``); threads per worker or None."""
        per_worker = None
        address = self.address
        # Dask's INFO lines (cluster start, every worker) would drown fide's progress; `fide -v` shows them
        verbose = logging.getLogger("fide").getEffectiveLevel() <= logging.DEBUG
        quiet = "info" if verbose else "warning"
        stack.enter_context(_logger_level("distributed", logging.INFO if verbose else logging.WARNING))
        if self.local_workers is not None:
            per_worker = max(1, (self.threads or available_cpus()) // self.local_workers)
            # the workers' torch reads the thread variables, their dask the log level, when they start; the nannies
            # set this environment before every (re)start of a worker, from the config and this process's variables
            environ = {**thread_environment(per_worker), **ONE_ARENA, "DASK_LOGGING__DISTRIBUTED": quiet}
            spawn = {f"distributed.nanny.pre-spawn-environ.{key}": value for key, value in environ.items()}
            # in force until the cluster has closed (the stack unwinds LIFO), not only while it starts: a nanny that
            # restarts a crashed worker, or anything else reading the config meanwhile, sees the same settings
            stack.enter_context(dask.config.set({**LOCAL_CONFIG, **spawn}))
            with child_environment(per_worker, environ):
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=self.local_workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                    )
                )
            address = cluster.scheduler_address
        try:
            client = Client(address, timeout=self.connect_timeout_s)
        except (OSError, TimeoutError, ValueError) as err:
            raise ClusterError(f"cannot reach the Dask scheduler at {self.address} ({one_line(err)})") from None
        try:
            yield client, per_worker
        finally:
            _close_quietly(client)

    def map_pairs(self, tasks: dict[int, PairTask]) -> Iterator[Completed]:
        if not tasks:
            return
        first = next(iter(tasks.values()))
        encoders, stripped = split_encoders(tasks)
        encoders = copy.deepcopy(encoders).cpu() if encoders is not None else None
        with ExitStack() as stack, self._client(stack) as (client, per_worker):
            name = f"fide-setup-{uuid.uuid4().hex[:12]}"  # one per run: runs sharing a cluster keep their own
            client.register_plugin(_FideSetup(name, first.cfg.seed, per_worker, encoders, first.device), name=name)
            workers = len(client.nthreads())
            logger.info("Dask scheduler %s: %d workers, %d pairs", self.address, workers, len(tasks))
            futures = {
                client.submit(_run, task, had, name, key=f"fide-pair-{index}-{name}", pure=False): index
                for index, (task, had) in stripped.items()
            }
            try:
                for future in as_completed(futures):
                    index = futures.pop(future)
                    try:
                        outcome, result = future.result()
                    except KilledWorker as err:
                        yield index, WorkerLost(_deaths(err)), None
                        continue
                    except CancelledError:  # fide never cancels a running pair: the scheduler went away
                        raise ClusterError(f"lost the Dask scheduler at {self.address}; rerun to resume") from None
                    except Exception as err:  # noqa: BLE001 - e.g. a worker without fide; the pair fails alone
                        yield index, WorkerLost(f"the Dask worker could not run the pair ({one_line(err)})"), None
                        continue
                    finally:
                        future.release()  # the worker forgets the pair's result
                    yield index, outcome, result
            finally:
                if futures and client.status == "running":
                    client.cancel(list(futures))
                if client.status == "running":
                    client.unregister_worker_plugin(name)


@contextmanager
def _logger_level(name: str, level: int):
    log = logging.getLogger(name)
    saved = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(saved)


def _deaths(err: KilledWorker) -> str:
    """The failure reason, with the deaths the scheduler allowed (``allowed-failures`` + 1: twice on ``local:N``)."""
    try:
        count = int(err.allowed_failures) + 1
    except (AttributeError, IndexError, TypeError, ValueError):  # another distributed version's exception
        return LOST_TWICE.replace("twice", "on every try")
    return LOST_TWICE if count == 2 else LOST_TWICE.replace("twice", f"{count} times")


def _close_quietly(client: Client) -> None:
    """Close the client; after a lost scheduler its reconnection attempts only log tracebacks."""
    loggers = [logging.getLogger(name) for name in ("distributed", "distributed.client", "distributed.utils")]
    levels = [each.level for each in loggers]
    if client.status != "running":
        for quiet in loggers:
            quiet.setLevel(logging.CRITICAL)
    try:
        client.close(timeout=10)
    except (OSError, TimeoutError, CancelledError, RuntimeError):
        pass
    finally:
        for quiet, level in zip(loggers, levels):
            quiet.setLevel(level)
