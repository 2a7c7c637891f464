"""Registering every pair of a dataset split: progress, failure isolation, results table, challenge fields.

One pair that cannot be read or registered gets an identity field and a one-line reason in ``results.csv``; the
others go on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from fide.config import FideConfig
from fide.io import DatasetError, Pair, atomic_path, read_image, write_disp
from fide.pipeline import FeatureFn, RegistrationResult, register_pair

__all__ = ["PairOutcome", "register_pairs", "METHODS", "RESULTS_NAME"]

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.csv"


@dataclass
class PairOutcome:
    """One row of ``results.csv``."""

    pair: str
    status: str  # "ok", "flagged" (low quality score) or "failed"
    seconds: float
    quality: float
    message: str = ""


def _zero_method(fixed: torch.Tensor, moving: torch.Tensor, cfg: FideConfig, device, features) -> RegistrationResult:
    """The honest "no registration" row: a zero field."""
    return RegistrationResult(torch.zeros(1, 2, *fixed.shape[-2:]), torch.eye(3), float("nan"))


def _fide_method(fixed, moving, cfg, device, features) -> RegistrationResult:
    return register_pair(fixed, moving, cfg, device=device, features=features)


METHODS: dict[str, Callable[..., RegistrationResult]] = {"fide": _fide_method, "zero": _zero_method}


def _write_results(rows: list[PairOutcome], path: Path) -> None:
    tmp = atomic_path(path)
    try:
        pd.DataFrame([vars(r) for r in rows]).to_csv(tmp, index=False, float_format="%.4f")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _identity_fallback(pair: Pair, path: Path) -> str:
    """Write a zero field of the fixed image's size where that size is readable; return a note for the log."""
    try:
        shape = read_image(pair.fixed).shape[-2:]
    except DatasetError:
        return "no field written (fixed image unreadable)"
    write_disp(path, torch.zeros(2, *shape))
    return "identity field written"


def register_pairs(
    pairs: list[Pair],
    output: Path,
    cfg: FideConfig,
    *,
    method: str = "fide",
    device: torch.device | None = None,
    features: FeatureFn | None = None,
    on_result: Callable[[Pair, RegistrationResult], None] | None = None,
) -> pd.DataFrame:
    """Register ``pairs`` and write ``disp_*.nii.gz`` plus ``results.csv`` into ``output``.

    Args:
        pairs: the pairs of one split.
        output: output folder (created; must be writable).
        cfg: hyper-parameters.
        method: a key of :data:`METHODS`.
        device: compute device (CPU when None).
        features: feature extractor passed to the pipeline (handcrafted MIND when None).
        on_result: called after each successful pair (e.g. to draw a QC picture).

    Returns:
        The results table (also written to ``output/results.csv`` after every pair).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".fide-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise DatasetError(f"{output}: output folder is not writable ({err.strerror})") from None
    rows: list[PairOutcome] = []
    progress = tqdm(pairs, desc="register", unit="pair", disable=None)
    for pair in progress:
        progress.set_postfix_str(pair.name)
        start = time.perf_counter()
        target = output / pair.disp_name
        try:
            fixed, moving = read_image(pair.fixed), read_image(pair.moving)
            result = METHODS[method](fixed, moving, cfg, device, features)
            write_disp(target, result.disp[0])
            flagged = result.quality == result.quality and result.quality < cfg.optimise.quality_flag_below
            status = "flagged" if flagged else "ok"
            message = f"low NMI {result.quality:.3f}" if flagged else ""
            rows.append(PairOutcome(pair.name, status, time.perf_counter() - start, result.quality, message))
            if on_result is not None:
                on_result(pair, result)
        except (DatasetError, RuntimeError, ValueError, OSError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            note = _identity_fallback(pair, target)
            logger.error("%s failed: %s (%s)", pair.name, reason, note)
            rows.append(PairOutcome(pair.name, "failed", time.perf_counter() - start, float("nan"), reason))
        _write_results(rows, output / RESULTS_NAME)
    return pd.DataFrame([vars(r) for r in rows])
