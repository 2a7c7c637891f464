"""The benchmark's rows: which methods exist, how each registers a list of pairs, and when one cannot run.

Adding a row is one line in :data:`METHODS`. ``run.py`` runs each row in its own process and scores its fields.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from baselines import ELASTIX_MAPS, elastix_available, elastix_disp, grey_channel, simpleitk_affine_disp
from tqdm import tqdm

from fide.cli._common import seed_everything
from fide.config import FideConfig
from fide.features.select import resolve_encoders
from fide.io import Pair, read_image, write_disp
from fide.runner import RESULTS_NAME, register_pairs

__all__ = ["METHODS", "DEFAULT_METHODS", "Method", "RunOptions", "Runner", "look_up_methods"]

logger = logging.getLogger("benchmark")


@dataclass(frozen=True)
class RunOptions:
    """What a worker passes to every method: compute device of fide rows, and the ``--features`` override."""

    device: str = "cpu"
    features: str | None = None  # FideConfig().encoder.features of fide rows that do not pin it themselves


# run(pairs, out_dir, options) registers ``pairs``, writes ``out_dir/disp_*.nii.gz`` and ``out_dir/results.csv``, and
# returns the results table (columns pair, status, seconds, ...): the shape of fide.runner.register_pairs' table
Runner = Callable[[list[Pair], Path, RunOptions], pd.DataFrame]


@dataclass(frozen=True)
class Method:
    """One row of the benchmark table.

    Attributes:
        label: row name.
        run: the :data:`Runner`.
        unavailable: returns None when the row can run, else the reason it is skipped (shown in the note column).
        warm_up: one-off set-up run before the timed pairs (e.g. ITK's lazy loading of its wrappers, ~35 s).
    """

    label: str
    run: Runner
    unavailable: Callable[[], str | None] = lambda: None
    warm_up: Callable[[], None] | None = None


def _fide_runner(
    stages: str = "deformable",
    features: str | None = None,
    method: str = "fide",
    deformable: bool = False,
    mirror: str = "auto",
    max_rotation_deg: float = 180.0,
) -> Runner:
    """fide through ``fide.runner.register_pairs``; ``features`` pins ``cfg.encoder.features`` for this row,
    ``deformable`` turns on the optional deformable residual (off by default) and ``mirror`` sets
    ``cfg.search.mirror`` (what the mirror search costs); ``max_rotation_deg`` is a known rotation range."""

    def run(pairs: list[Pair], out: Path, options: RunOptions) -> pd.DataFrame:
        cfg = FideConfig(stages=stages)
        cfg.encoder.features = features or options.features or cfg.encoder.features
        cfg.deformable.enabled = deformable
        cfg.search.mirror = mirror
        cfg.search.max_rotation_deg = max_rotation_deg
        if method == "fide":
            logger.info("fide config: stages=%s, encoder.features=%s", cfg.stages, cfg.encoder.features)
        seed_everything(cfg.seed)  # as `fide register` does
        device = torch.device(options.device)
        encoders = resolve_encoders(cfg.encoder, device)  # None = handcrafted MIND-SSC
        return register_pairs(pairs, out, cfg, method=method, device=device, encoders=encoders)

    return run


def _pairwise_runner(disp_fn: Callable[[torch.Tensor, torch.Tensor], np.ndarray]) -> Runner:
    """A per-pair function ``disp_fn(fixed (C, H, W), moving (C, Hm, Wm)) -> (2, H, W)`` run over the pairs.

    Seconds per pair span reading the images to writing the field, as in ``register_pairs``. A pair whose
    registration raises (ITK raises RuntimeError, e.g. "all samples map outside the moving image") or returns
    non-finite values gets a zero field and status "failed"; the others go on.
    """

    def run(pairs: list[Pair], out: Path, options: RunOptions) -> pd.DataFrame:
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for pair in tqdm(pairs, desc="register", unit="pair", disable=None):
            start = time.perf_counter()
            fixed, moving = read_image(pair.fixed), read_image(pair.moving)
            status, message = "ok", ""
            try:
                disp = disp_fn(fixed, moving)
                if not np.isfinite(disp).all():
                    raise ValueError("non-finite displacement")
            except (RuntimeError, ValueError) as err:
                message = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
                logger.error("%s failed: %s (zero field written)", pair.name, message)
                status, disp = "failed", np.zeros((2, *fixed.shape[-2:]), dtype=np.float32)
            write_disp(out / pair.disp_name, disp)
            seconds = time.perf_counter() - start
            rows.append({"pair": pair.name, "status": status, "seconds": seconds, "message": message})
            pd.DataFrame(rows).to_csv(out / RESULTS_NAME, index=False, float_format="%.4f")
        return pd.DataFrame(rows)

    return run


def _grey_pair(fixed: torch.Tensor, moving: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return grey_channel(fixed, moving.shape[0]), grey_channel(moving, fixed.shape[0])


def _elastix(fixed: torch.Tensor, moving: torch.Tensor, maps: tuple[str, ...]) -> np.ndarray:
    return elastix_disp(*_grey_pair(fixed, moving), maps=maps)


def _simpleitk(fixed: torch.Tensor, moving: torch.Tensor) -> np.ndarray:
    return simpleitk_affine_disp(*_grey_pair(fixed, moving))


def _elastix_warm_up() -> None:
    """Run elastix once on a small blob: itk loads its wrapped modules on first use (~35 s, not a per-pair cost)."""
    grid = np.mgrid[:64, :64].astype(np.float32)
    blob = np.exp(-((grid[0] - 30) ** 2 + (grid[1] - 36) ** 2) / 200).astype(np.float32)
    elastix_disp(blob, np.roll(blob, 2, axis=0), maps=("affine",))


def _learned_weights_missing() -> str | None:
    """None when learned encoder weights exist (cfg.encoder.weights, else the shipped default), else the reason."""
    weights = FideConfig().encoder.weights
    if not weights:
        try:
            from fide.features.encoders import DEFAULT_WEIGHTS
        except ImportError as err:
            return f"learned encoders not available in this checkout ({err})"
        weights = DEFAULT_WEIGHTS
    return None if Path(weights).is_file() else f"no learned encoder weights at {weights}"


# name -> row; adding a row is one line
METHODS: dict[str, Method] = {
    "fide": Method("fide", _fide_runner()),
    "fide-prealign": Method("fide (stages=prealign)", _fide_runner(stages="prealign")),
    "fide-learned": Method("fide (learned)", _fide_runner(features="learned"), _learned_weights_missing),
    "fide-learned-prealign": Method(
        "fide (learned, stages=prealign)", _fide_runner("prealign", "learned"), _learned_weights_missing
    ),
    "fide-handcrafted": Method("fide (handcrafted)", _fide_runner(features="handcrafted")),
    "fide-handcrafted-prealign": Method("fide (handcrafted, stages=prealign)", _fide_runner("prealign", "handcrafted")),
    "fide-deformable": Method("fide (+ deformable residual)", _fide_runner(deformable=True)),
    "fide-no-mirror": Method("fide (mirror search off)", _fide_runner(mirror="never")),
    # what a user who knows the challenge's range says: --max-rotation 20 --mirror never
    "fide-challenge": Method("fide (±20°, no mirror)", _fide_runner(mirror="never", max_rotation_deg=20.0)),
    "zero": Method("zero field", _fide_runner(method="zero")),
    "elastix-affine": Method(
        "elastix affine (MI)",
        _pairwise_runner(partial(_elastix, maps=ELASTIX_MAPS["affine"])),
        elastix_available,
        _elastix_warm_up,
    ),
    "elastix-bspline": Method(
        "elastix affine+B-spline (MI)",
        _pairwise_runner(partial(_elastix, maps=ELASTIX_MAPS["bspline"])),
        elastix_available,
        _elastix_warm_up,
    ),
    "simpleitk-affine": Method("SimpleITK affine (MI)", _pairwise_runner(_simpleitk)),
}
DEFAULT_METHODS = ("fide", "fide-prealign", "zero", "elastix-affine", "elastix-bspline", "simpleitk-affine")


def look_up_methods(value: str) -> list[str]:
    names = list(METHODS) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown methods {unknown}; expected 'all' or a comma list of {list(METHODS)}"
        )
    return names
