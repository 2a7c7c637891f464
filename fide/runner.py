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
from fide.io import DatasetError, Pair, atomic_path, read_disp, read_image, write_disp
from fide.pipeline import FeatureFn, RegistrationResult, register_pair

__all__ = [
    "PairOutcome",
    "register_pairs",
    "select_shard",
    "results_name",
    "merge_results",
    "fixed_shape",
    "METHODS",
    "RESULTS_NAME",
    "STATUSES",
]

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.csv"
# "ok"; "flagged": written but the quality score is low; "failed": identity field; "skipped": valid field kept
STATUSES = ("ok", "flagged", "failed", "skipped")
_COLUMNS = ["pair", "status", "seconds", "quality", "message"]


@dataclass
class PairOutcome:
    """One row of ``results.csv``."""

    pair: str
    status: str  # one of STATUSES
    seconds: float
    quality: float
    message: str = ""


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


def results_name(shard: tuple[int, int] | None = None) -> str:
    """``results.csv``, or ``results.shard-I-of-N.csv`` for a shard."""
    return RESULTS_NAME if shard is None else f"results.shard-{shard[0]}-of-{shard[1]}.csv"


def _read_tables(output: Path) -> pd.DataFrame:
    """Rows of every ``results*.csv`` in ``output``, oldest file first (empty when none)."""
    files = sorted(output.glob("results*.csv"), key=lambda p: (p.stat().st_mtime, p.name))
    tables = []
    for file in files:
        try:
            table = pd.read_csv(file, dtype={"pair": str, "status": str, "message": str}, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as err:
            logger.warning("%s: ignoring an unreadable results table (%s)", file, err)
            continue
        if set(_COLUMNS) <= set(table.columns):
            tables.append(table[_COLUMNS])
    if not tables:
        return pd.DataFrame(columns=_COLUMNS)
    table = pd.concat(tables, ignore_index=True)
    for column in ("seconds", "quality"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def merge_results(output: str | Path, write: bool = True) -> pd.DataFrame:
    """Join the tables of all shards (and earlier runs) in ``output``: the newest row of each pair wins.

    Args:
        output: folder holding ``results.csv`` and/or ``results.shard-*.csv``.
        write: also write the merged table to ``output/results.csv``.

    Returns:
        One row per pair, sorted by pair name.
    """
    output = Path(output)
    table = _read_tables(output).drop_duplicates("pair", keep="last").sort_values("pair").reset_index(drop=True)
    if write:
        _write_table(table, output / RESULTS_NAME)
    return table


def _write_table(table: pd.DataFrame, path: Path) -> None:
    tmp = atomic_path(path)
    try:
        table.to_csv(tmp, index=False, float_format="%.4f")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    except (OSError, RuntimeError, ValueError) as err:
        return f"no field written ({err})"
    return "identity field written"


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
    worker: Callable[[Pair], RegistrationResult] | None = None,
    is_complete: Callable[[Pair], bool] | None = None,
) -> pd.DataFrame:
    """Register ``pairs`` and write ``disp_*.nii.gz`` plus the results table into ``output``.

    Args:
        pairs: the pairs of one split (all shards' pairs when ``shard`` is given).
        output: output folder (created; must be writable).
        cfg: hyper-parameters.
        method: a key of :data:`METHODS`.
        device: compute device (CPU when None).
        features: feature extractor passed to the pipeline (handcrafted MIND when None).
        on_result: called after each registered pair (e.g. to draw a QC picture); an error in it is logged and
            does not fail the pair.
        resume: keep pairs whose field is already complete and valid (and their earlier rows) instead of
            recomputing them; off by default, so a caller that changed the config never gets stale fields.
        shard: ``(I, N)``: process only :func:`select_shard` ``(pairs, I, N)`` and write
            ``results.shard-I-of-N.csv`` instead of ``results.csv``.
        encoders: learned modality encoders for the fide method (handcrafted features when None).
        worker: registers one pair and writes its own outputs (``fide align``), instead of reading the images,
            running ``method`` and writing the field; a pair it fails gets no identity field, only its row.
        is_complete: resume check for ``worker``'s outputs, instead of the field check.

    Returns:
        The results table of the processed pairs (also written after every pair), columns
        ``pair, status, seconds, quality, message``.

    Raises:
        ValueError: unknown ``method`` or invalid ``shard``.
        DatasetError: the output folder is not writable.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if shard is not None:
        pairs = select_shard(pairs, *shard)
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".fide-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise DatasetError(f"{output}: output folder is not writable ({err.strerror})") from None
    table_path = output / results_name(shard)
    earlier = {} if not resume else {row.pair: row for row in _read_tables(output).itertuples(index=False)}
    rows: list[PairOutcome] = []
    progress = tqdm(pairs, desc="register", unit="pair", disable=None)
    for pair in progress:
        progress.set_postfix_str(pair.name)
        start = time.perf_counter()
        target = output / pair.disp_name
        previous = earlier.get(pair.name)
        if (
            resume
            and (previous is None or previous.status != "failed")
            and (is_complete(pair) if is_complete is not None else _valid_field(pair, target))
        ):
            if previous is not None:
                rows.append(PairOutcome(*previous))
            else:
                seconds = time.perf_counter() - start
                rows.append(PairOutcome(pair.name, "skipped", seconds, float("nan"), "valid field kept"))
            logger.info("%s: valid field %s kept (use --force to recompute)", pair.name, target.name)
            _write_table(pd.DataFrame([vars(r) for r in rows], columns=_COLUMNS), table_path)
            continue
        result = None
        try:
            if worker is not None:
                result = worker(pair)
            else:
                fixed, moving = read_image(pair.fixed), read_image(pair.moving)
                result = METHODS[method](fixed, moving, cfg, device, features, encoders)
                write_disp(target, result.disp[0])
            flagged = result.quality == result.quality and result.quality < cfg.optimise.quality_flag_below
            status = "flagged" if flagged else "ok"
            message = "; ".join(([f"low NMI {result.quality:.3f}"] if flagged else []) + result.notes)
            rows.append(PairOutcome(pair.name, status, time.perf_counter() - start, result.quality, message))
        except Exception as err:  # noqa: BLE001 - one pair never stops the others; the reason is recorded
            result = None
            reason = _one_line(err)
            if not isinstance(err, (DatasetError, RuntimeError, ValueError, OSError)):
                reason = f"{type(err).__name__}: {reason}"
                logger.debug("%s: traceback", pair.name, exc_info=True)
            if torch.cuda.is_available():  # after a CUDA out-of-memory error, give the cache back before the next pair
                torch.cuda.empty_cache()
            note = _identity_fallback(pair, target) if worker is None else "no outputs written"
            logger.error("%s failed: %s (%s)", pair.name, reason, note)
            rows.append(PairOutcome(pair.name, "failed", time.perf_counter() - start, float("nan"), reason))
        _write_table(pd.DataFrame([vars(r) for r in rows], columns=_COLUMNS), table_path)
        if result is not None and on_result is not None:
            try:
                on_result(pair, result)
            except Exception as err:  # noqa: BLE001 - a QC picture must not fail a registered pair
                logger.warning("%s: result callback failed: %s", pair.name, _one_line(err))
    return pd.DataFrame([vars(r) for r in rows], columns=_COLUMNS)
