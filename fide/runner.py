"""Registering every pair of a dataset split: progress, failure isolation, resume, sharding, results table, fields.

* **Failure isolation.** A pair that cannot be read or registered gets an identity field (when the fixed image's
  size can be read, from its header if the pixels are damaged), status ``failed`` and a one-line reason in the
  results table and the log; the others go on.
* **Resume** (``resume=True``; ``fide register`` resumes unless ``--force``). A pair whose ``disp_*.nii.gz``
  exists, decompresses completely, has the fixed image's shape and is finite is kept (fields are written
  atomically, so an interrupted run leaves either a complete field or none). Its earlier results row is kept;
  without one it is recorded as ``skipped``. Pairs that failed earlier are retried. The default recomputes all.
* **Sharding.** ``shard=(I, N)`` processes ``pairs[I::N]`` (descriptor order, round robin) and writes its table to
  ``results.shard-I-of-N.csv`` so that shards never share a file; :func:`merge_results` joins them.
* **Bad input** fails its pair before any registration work, with one line naming the file: unreadable images,
  images with nothing to register (:mod:`fide.preprocess.signal`), or too large for the memory left
  (:func:`check_memory`). Exceptions fide does not raise itself are reported as internal errors.
* **Executors.** Who runs the pairs: this process, ``jobs=N`` worker processes, or a Dask cluster
  (:mod:`fide.executors`). The table, resume, failure rows, progress and callbacks are kept here, once, for all
  three, and the fields stay those of a single process. A pair whose worker died twice is ``failed`` (identity
  field, the temporary files of its interrupted write removed); a lost cluster stops the run
  (:class:`fide.executors.ClusterError`) with the table current, so a rerun resumes.

One pair's work (:class:`PairTask`, :func:`process_pair`, :func:`check_memory`, :data:`METHODS`) lives in
:mod:`fide.pair_task`, which this module and the executors share; the names are re-exported here.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from fide.config import FideConfig
from fide.executors import Executor, WorkerLost, make_executor
from fide.features import ModalityEncoders
from fide.io import DatasetError, Pair, read_disp
from fide.io.dataset import unique_pairs
from fide.pair_task import (
    METHODS,
    PairTask,
    check_memory,
    discard_partials,
    fixed_shape,
    identity_fallback,
    one_line,
    process_pair,
)
from fide.pipeline import FeatureFn, RegistrationResult
from fide.results import (
    COLUMNS,
    RESULTS_NAME,
    STATUSES,
    PairOutcome,
    merge_results,
    read_tables,
    results_name,
    write_table,
)

__all__ = [
    "PairOutcome",
    "PairTask",
    "register_pairs",
    "process_pair",
    "check_memory",
    "select_shard",
    "results_name",
    "merge_results",
    "fixed_shape",
    "METHODS",
    "RESULTS_NAME",
    "STATUSES",
]

logger = logging.getLogger(__name__)


def select_shard(pairs: Sequence[Pair], index: int, count: int) -> list[Pair]:
    """The deterministic slice ``pairs[index::count]`` of shard ``index`` (0-based) out of ``count``.

    Raises:
        ValueError: ``count`` < 1 or ``index`` outside [0, count).
    """
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}), got {index}")
    return list(pairs)[index::count]


def _check_gzip(path: Path) -> None:
    """Decompress a ``.gz`` file to its end: SimpleITK reads a truncated stream without complaint, zero-filled."""
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass


def _valid_field(pair: Pair, target: Path) -> bool:
    """Whether ``target`` holds a complete, finite field of the fixed image's shape."""
    if not target.is_file():
        return False
    try:
        _check_gzip(target)
        read_disp(target, fixed_shape(pair))
    except (DatasetError, OSError, EOFError, ValueError) as err:
        logger.info("%s: existing field is not usable, recomputing (%s)", pair.name, str(err).splitlines()[0])
        return False
    return True


def _check_writable(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".fide-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise DatasetError(f"{output}: output folder is not writable ({err.strerror or err})") from None


def _lost(task: PairTask, lost: WorkerLost) -> PairOutcome:
    """The failure row of a pair whose worker died: what it left half-written removed, an identity field."""
    for path in discard_partials(task):
        logger.info("%s: removed %s, left by the worker that died", task.pair.name, path.name)
    note = identity_fallback(task.pair, task.target) if task.worker is None else "no outputs written"
    logger.error("%s failed: %s (%s)", task.pair.name, lost, note)
    return PairOutcome(task.pair.name, "failed", float("nan"), float("nan"), message=str(lost))


def register_pairs(
    pairs: list[Pair],
    output: Path,
    cfg: FideConfig,
    *,
    method: str = "fide",
    device: torch.device | None = None,
    features: FeatureFn | None = None,
    on_result: Callable[[Pair, RegistrationResult], None] | None = None,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    encoders: ModalityEncoders | None = None,
    jobs: int = 1,
    threads: int | None = None,
    worker: Callable[[Pair, ModalityEncoders | None], RegistrationResult] | None = None,
    is_complete: Callable[[Pair], bool] | None = None,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Register ``pairs`` and write ``disp_*.nii.gz`` plus the results table into ``output``.

    Args:
        pairs: the pairs of one split (all shards' pairs when ``shard`` is given). An entry listed twice is
            registered once.
        output: output folder (created; must be writable).
        cfg: hyper-parameters.
        method: a key of :data:`METHODS`.
        device: compute device (CPU when None).
        features: feature extractor passed to the pipeline (handcrafted MIND when None); must be picklable for
            worker processes and Dask.
        on_result: called after each registered pair (e.g. to draw a QC picture), in this process; an error in it
            is logged and does not fail the pair.
        resume: keep pairs whose field is already complete and valid (and their earlier rows) instead of
            recomputing them; off by default, so a caller that changed the config never gets stale fields.
        shard: ``(I, N)``: process only :func:`select_shard` ``(pairs, I, N)`` and write
            ``results.shard-I-of-N.csv`` instead of ``results.csv``.
        encoders: learned modality encoders for the fide method (handcrafted features when None).
        jobs: worker processes registering pairs side by side (:mod:`fide.executors`); 1 = in this process.
        threads: threads in all (split evenly between the ``jobs`` workers); None = this process's torch setting
            for ``jobs`` = 1, :func:`fide.resources.available_cpus` otherwise.
        worker: ``worker(pair, encoders)`` registers one pair and writes its own outputs (``fide align``), instead
            of reading the images, running ``method`` and writing the field; a pair it fails gets no identity
            field, only its row. Must be picklable for worker processes and Dask.
        is_complete: resume check for ``worker``'s outputs, instead of the field check.
        executor: runs the pairs (e.g. :func:`fide.executors.make_executor` ``(dask=...)``) instead of the one
            ``jobs`` and ``threads`` give.

    Returns:
        The results table of the processed pairs in ``pairs`` order (also written after every pair), columns
        ``pair, status, seconds, quality, confidence, mirrored, message``.

    Raises:
        ValueError: unknown ``method``, invalid ``shard``, ``jobs`` or ``threads`` < 1, or ``executor`` with
            ``jobs`` > 1.
        DatasetError: the output folder or the results table is not writable, or two pairs share a field name.
        fide.executors.ClusterError: the Dask scheduler could not be reached or went away (the table holds the
            pairs done until then).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if executor is not None and jobs > 1:
        raise ValueError(f"give jobs or an executor, not both (jobs={jobs})")
    executor = executor or make_executor(jobs, threads)
    if shard is not None:
        pairs = select_shard(pairs, *shard)
    pairs = unique_pairs(list(pairs))
    output = Path(output)
    _check_writable(output)
    table_path = output / results_name(shard)
    earlier = {} if not resume else {row.pair: row for row in read_tables(output).itertuples(index=False)}
    rows: dict[int, PairOutcome] = {}
    tasks: dict[int, PairTask] = {}
    for index, pair in enumerate(pairs):
        target = output / pair.disp_name
        previous = earlier.get(pair.name)
        complete = is_complete(pair) if is_complete is not None else _valid_field(pair, target)
        if resume and (previous is None or previous.status != "failed") and complete:
            kept = PairOutcome(*previous) if previous is not None else None
            rows[index] = kept or PairOutcome(pair.name, "skipped", 0.0, float("nan"), message="valid field kept")
            logger.info("%s: valid field %s kept (use --force to recompute)", pair.name, target.name)
            continue
        want = on_result is not None
        tasks[index] = PairTask(pair, target, cfg, method, device, features, encoders, want, worker)

    def write() -> None:
        table = pd.DataFrame([vars(rows[k]) for k in sorted(rows)], columns=COLUMNS)
        try:
            write_table(table, table_path)
        except OSError as err:
            raise DatasetError(f"{table_path}: cannot write the results table ({err.strerror or err})") from None

    progress = tqdm(total=len(pairs), desc="register", unit="pair", disable=None)
    progress.update(len(rows))
    if rows:
        write()
    for index, outcome, result in executor.map_pairs(tasks):
        if isinstance(outcome, WorkerLost):
            outcome = _lost(tasks[index], outcome)
        rows[index] = outcome
        progress.set_postfix_str(outcome.pair)
        progress.update(1)
        write()
        if result is not None and on_result is not None:
            try:
                on_result(pairs[index], result)
            except Exception as err:  # noqa: BLE001 - a QC picture must not fail a registered pair
                logger.warning("%s: result callback failed: %s", pairs[index].name, one_line(err))
    progress.close()
    return pd.DataFrame([vars(rows[k]) for k in sorted(rows)], columns=COLUMNS)
