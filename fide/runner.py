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
* **Jobs.** ``jobs=N`` registers in N worker processes (:mod:`fide.workers`); the table, resume and the fields
  stay those of a single process.
"""

from __future__ import annotations

import gzip
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import pandas as pd
import torch
from tqdm import tqdm

from fide.config import FideConfig
from fide.features import ModalityEncoders
from fide.io import DatasetError, Pair, read_disp, read_image, write_disp
from fide.io.dataset import unique_pairs
from fide.optimise.confidence import flag_reason
from fide.pipeline import FeatureFn, RegistrationResult, register_pair
from fide.preprocess.signal import check_pair_signal
from fide.resources import available_cpus, available_memory_bytes, configure_threads, estimate_pair_memory_bytes
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


def _zero_method(fixed, moving, cfg: FideConfig, device, features, encoders) -> RegistrationResult:
    """The honest "no registration" row: a zero field."""
    return RegistrationResult(torch.zeros(1, 2, *fixed.shape[-2:]), torch.eye(3), float("nan"))


def _fide_method(fixed, moving, cfg, device, features, encoders) -> RegistrationResult:
    return register_pair(fixed, moving, cfg, device=device, features=features, encoders=encoders)


METHODS: dict[str, Callable[..., RegistrationResult]] = {"fide": _fide_method, "zero": _zero_method}


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


def fixed_shape(pair: Pair) -> tuple[int, int]:
    """(H, W) of the pair's fixed image, from the NIfTI header when possible (no pixels decompressed)."""
    if pair.fixed.name.endswith((".nii", ".nii.gz")):
        try:
            shape = nib.load(str(pair.fixed)).shape
            if len(shape) >= 2:
                return int(shape[0]), int(shape[1])
        except Exception:  # noqa: BLE001 - any nibabel failure falls back to the full reader and its error
            pass
    height, width = read_image(pair.fixed).shape[-2:]
    return int(height), int(width)


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


def _identity_fallback(pair: Pair, path: Path) -> str:
    """Write a zero field of the fixed image's size where that size is readable; return a note for the log."""
    try:
        shape = fixed_shape(pair)
    except (DatasetError, OSError, ValueError):
        return "no field written (fixed image unreadable)"
    try:
        write_disp(path, torch.zeros(2, *shape))
    except (OSError, RuntimeError, ValueError, MemoryError) as err:
        return f"no field written ({_one_line(err)})"
    return "identity field written"


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _failure_reason(err: BaseException) -> str:
    """The user's line for a failed pair: fide's own messages as they are, anything else marked as internal."""
    if isinstance(err, (DatasetError, OSError, ValueError)):  # fide's checks name the file / value and expectation
        return _one_line(err)
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(err):
        return f"out of memory while registering ({_one_line(err)[:160]})"
    return f"internal error ({type(err).__name__}: {_one_line(err)[:160]}); `fide -v register` logs the traceback"


def _image_shape(path: Path) -> tuple[int, int] | None:
    """(H, W) from a NIfTI header without decompressing pixels; None for other formats or unreadable headers."""
    if not path.name.endswith((".nii", ".nii.gz")):
        return None
    try:
        shape = nib.load(str(path)).shape
    except Exception:  # noqa: BLE001 - the reader reports a broken file with its own message
        return None
    return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None


def check_memory(pair: Pair) -> None:
    """Refuse a pair that cannot fit in the memory left, before any pixel is decompressed (NIfTI headers only).

    Raises:
        DatasetError: the estimate (:func:`fide.resources.estimate_pair_memory_bytes`) exceeds what is available.
    """
    fixed_hw, moving_hw = _image_shape(pair.fixed), _image_shape(pair.moving)
    available = available_memory_bytes()
    if fixed_hw is None or moving_hw is None or available is None:
        return
    needed = estimate_pair_memory_bytes(fixed_hw, moving_hw)
    if needed > available:
        raise DatasetError(
            f"{pair.fixed}: registering this pair needs about {needed / 2**30:.1f} GiB "
            f"(fixed {fixed_hw[0]} x {fixed_hw[1]}, moving {moving_hw[0]} x {moving_hw[1]} px), "
            f"only {available / 2**30:.1f} GiB available"
        )


@dataclass
class PairTask:
    """Everything one pair's registration needs; picklable, so a worker process can run it (:mod:`fide.workers`)."""

    pair: Pair
    target: Path
    cfg: FideConfig
    method: str = "fide"
    device: torch.device | None = None
    features: FeatureFn | None = None
    encoders: ModalityEncoders | None = None
    want_result: bool = True
    # registers the pair and writes its own outputs (``fide align``) instead of the read / method / field steps
    worker: Callable[[Pair], RegistrationResult] | None = None


def process_pair(task: PairTask) -> tuple[PairOutcome, RegistrationResult | None]:
    """Read, check, register and write one pair; never raises for the pair's own problems.

    Returns:
        The pair's results row and its result (None when it failed, or when ``task.want_result`` is off).
    """
    pair, cfg, start = task.pair, task.cfg, time.perf_counter()
    try:
        if task.worker is not None:
            result = task.worker(pair)
        else:
            if task.device is None or torch.device(task.device).type == "cpu":
                check_memory(pair)
            fixed, moving = read_image(pair.fixed), read_image(pair.moving)
            check_pair_signal(fixed, moving, str(pair.fixed), str(pair.moving), cfg.preprocess)
            result = METHODS[task.method](fixed, moving, cfg, task.device, task.features, task.encoders)
            write_disp(task.target, result.disp[0])
        reason = flag_reason(result.confidence, result.confidence_basis, result.scores, cfg.confidence)
        status = "ok" if reason is None else "flagged"
        message = "; ".join(([reason] if reason else []) + (["mirrored"] if result.mirrored else []) + result.notes)
        seconds = time.perf_counter() - start
        outcome = PairOutcome(pair.name, status, seconds, result.quality, result.confidence, result.mirrored, message)
        return outcome, (result if task.want_result else None)
    except Exception as err:  # noqa: BLE001 - one pair never stops the others; the reason is recorded
        reason = _failure_reason(err)
        if not isinstance(err, (DatasetError, OSError, ValueError)):
            logger.debug("%s: traceback", pair.name, exc_info=True)
        if torch.cuda.is_available():  # after a CUDA out-of-memory error, give the cache back before the next pair
            torch.cuda.empty_cache()
        note = _identity_fallback(pair, task.target) if task.worker is None else "no outputs written"
        logger.error("%s failed: %s (%s)", pair.name, reason, note)
        return PairOutcome(pair.name, "failed", time.perf_counter() - start, float("nan"), message=reason), None


def _check_writable(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".fide-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise DatasetError(f"{output}: output folder is not writable ({err.strerror or err})") from None


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
    worker: Callable[[Pair], RegistrationResult] | None = None,
    is_complete: Callable[[Pair], bool] | None = None,
) -> pd.DataFrame:
    """Register ``pairs`` and write ``disp_*.nii.gz`` plus the results table into ``output``.

    Args:
        pairs: the pairs of one split (all shards' pairs when ``shard`` is given). An entry listed twice is
            registered once.
        output: output folder (created; must be writable).
        cfg: hyper-parameters.
        method: a key of :data:`METHODS`.
        device: compute device (CPU when None).
        features: feature extractor passed to the pipeline (handcrafted MIND when None); must be picklable when
            ``jobs`` > 1.
        on_result: called after each registered pair (e.g. to draw a QC picture), in this process; an error in it
            is logged and does not fail the pair.
        resume: keep pairs whose field is already complete and valid (and their earlier rows) instead of
            recomputing them; off by default, so a caller that changed the config never gets stale fields.
        shard: ``(I, N)``: process only :func:`select_shard` ``(pairs, I, N)`` and write
            ``results.shard-I-of-N.csv`` instead of ``results.csv``.
        encoders: learned modality encoders for the fide method (handcrafted features when None).
        jobs: worker processes registering pairs side by side (:mod:`fide.workers`); 1 = in this process.
        threads: threads in all (split evenly between the ``jobs`` workers); None = this process's torch setting
            for ``jobs`` = 1, :func:`fide.resources.available_cpus` otherwise.
        worker: registers one pair and writes its own outputs (``fide align``), instead of reading the images,
            running ``method`` and writing the field; a pair it fails gets no identity field, only its row. Only
            with ``jobs`` = 1 (it need not be picklable).
        is_complete: resume check for ``worker``'s outputs, instead of the field check.

    Returns:
        The results table of the processed pairs in ``pairs`` order (also written after every pair), columns
        ``pair, status, seconds, quality, confidence, mirrored, message``.

    Raises:
        ValueError: unknown ``method``, invalid ``shard``, ``jobs`` or ``threads`` < 1.
        DatasetError: the output folder or the results table is not writable, or two pairs share a field name.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if jobs < 1 or (threads is not None and threads < 1):
        raise ValueError(f"jobs and threads must be >= 1, got jobs={jobs}, threads={threads}")
    if worker is not None and jobs > 1:
        raise ValueError(f"a worker function runs in this process only, got jobs={jobs}")
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
    if jobs == 1:
        if threads is not None:
            configure_threads(threads)
        outcomes = ((index, *process_pair(task)) for index, task in tasks.items())
    else:
        from fide.workers import run_in_workers  # multiprocessing only when asked for

        outcomes = run_in_workers(tasks, jobs, threads or available_cpus())
    for index, outcome, result in outcomes:
        rows[index] = outcome
        progress.set_postfix_str(outcome.pair)
        progress.update(1)
        write()
        if result is not None and on_result is not None:
            try:
                on_result(pairs[index], result)
            except Exception as err:  # noqa: BLE001 - a QC picture must not fail a registered pair
                logger.warning("%s: result callback failed: %s", pairs[index].name, _one_line(err))
    progress.close()
    return pd.DataFrame([vars(rows[k]) for k in sorted(rows)], columns=COLUMNS)
