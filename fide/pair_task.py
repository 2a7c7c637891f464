"""One pair's registration as a self-contained task: read, check, register, write, and fail alone.

:func:`process_pair` runs a :class:`PairTask` the same way in the calling process and in any executor's worker
(:mod:`fide.executors`); the runner and the executors import it from here, so neither imports the other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import torch

from fide.config import FideConfig
from fide.features import ModalityEncoders
from fide.io import DatasetError, Pair, read_image, write_disp
from fide.pipeline import FeatureFn, RegistrationResult, register_pair
from fide.preprocess.signal import check_pair_signal
from fide.resources import available_memory_bytes, estimate_pair_memory_bytes, release_free_heap
from fide.results import PairOutcome

__all__ = [
    "PairTask",
    "process_pair",
    "check_memory",
    "fixed_shape",
    "identity_fallback",
    "discard_partials",
    "one_line",
    "METHODS",
]

logger = logging.getLogger(__name__)


def _zero_method(fixed, moving, cfg: FideConfig, device, features, encoders) -> RegistrationResult:
    """The honest "no registration" row: a zero field."""
    return RegistrationResult(torch.zeros(1, 2, *fixed.shape[-2:]), torch.eye(3), float("nan"))


def _fide_method(fixed, moving, cfg, device, features, encoders) -> RegistrationResult:
    return register_pair(fixed, moving, cfg, device=device, features=features, encoders=encoders)


METHODS: dict[str, Callable[..., RegistrationResult]] = {"fide": _fide_method, "zero": _zero_method}


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


def identity_fallback(pair: Pair, path: Path) -> str:
    """Write a zero field of the fixed image's size where that size is readable; return a note for the log."""
    try:
        shape = fixed_shape(pair)
    except (DatasetError, OSError, ValueError):
        return "no field written (fixed image unreadable)"
    try:
        write_disp(path, torch.zeros(2, *shape))
    except (OSError, RuntimeError, ValueError, MemoryError) as err:
        return f"no field written ({one_line(err)})"
    return "identity field written"


def discard_partials(task: PairTask) -> list[Path]:
    """Remove the temporary files a worker that died mid-write left beside the task's outputs; return them.

    Writers write to :func:`fide.io.atomic_path` and rename, so a death leaves only such a file, never a
    half-written output under its real name. A ``worker`` task owns its whole folder (``OUT/<name>/``).
    """
    folder, name = task.target.parent, task.target.name
    stem = name[: -len("".join(task.target.suffixes))] if task.target.suffixes else name
    found = sorted(folder.glob(".*.part*" if task.worker is not None else f".{stem}.*.part*"))
    for path in found:
        path.unlink(missing_ok=True)
    return found


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _failure_reason(err: BaseException) -> str:
    """The user's line for a failed pair: fide's own messages as they are, anything else marked as internal."""
    if isinstance(err, (DatasetError, OSError, ValueError)):  # fide's checks name the file / value and expectation
        return one_line(err)
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(err):
        return f"out of memory while registering ({one_line(err)[:160]})"
    return f"internal error ({type(err).__name__}: {one_line(err)[:160]}); `fide -v register` logs the traceback"


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
    """Everything one pair's registration needs; picklable, so a worker can run it (:mod:`fide.executors`)."""

    pair: Pair
    target: Path
    cfg: FideConfig
    method: str = "fide"
    device: torch.device | None = None
    features: FeatureFn | None = None
    encoders: ModalityEncoders | None = None
    want_result: bool = True
    # registers the pair with the encoders and writes its own outputs (``fide align``) instead of the read / method /
    # field steps; picklable for the worker processes and Dask
    worker: Callable[[Pair, ModalityEncoders | None], RegistrationResult] | None = None


def process_pair(task: PairTask) -> tuple[PairOutcome, RegistrationResult | None]:
    """Read, check, register and write one pair; never raises for the pair's own problems.

    Every executor runs its pairs through here, so each process gives the pair's freed heap back to the operating
    system afterwards (:func:`fide.resources.release_free_heap`) in the same place: one process, ``--jobs`` workers
    and Dask workers alike.

    Returns:
        The pair's results row and its result (None when it failed, or when ``task.want_result`` is off).
    """
    try:
        return _process_pair(task)
    finally:  # after the pair's frame is gone: only the returned result is still held
        release_free_heap()


def _process_pair(task: PairTask) -> tuple[PairOutcome, RegistrationResult | None]:
    pair, cfg, start = task.pair, task.cfg, time.perf_counter()
    try:
        if task.worker is not None:
            result = task.worker(pair, task.encoders)
        else:
            if task.device is None or torch.device(task.device).type == "cpu":
                check_memory(pair)
            fixed, moving = read_image(pair.fixed), read_image(pair.moving)
            check_pair_signal(fixed, moving, str(pair.fixed), str(pair.moving), cfg.preprocess)
            result = METHODS[task.method](fixed, moving, cfg, task.device, task.features, task.encoders)
            write_disp(task.target, result.disp[0])
        reason = result.flag_reason
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
        note = identity_fallback(pair, task.target) if task.worker is None else "no outputs written"
        logger.error("%s failed: %s (%s)", pair.name, reason, note)
        return PairOutcome(pair.name, "failed", time.perf_counter() - start, float("nan"), message=reason), None
