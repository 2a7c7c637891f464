"""Ablation table: which part of FIDE buys how much TRE (the paper reports none).

Every variant is a copy of one base :class:`~fide.config.FideConfig` with one change, run through
:func:`fide.runner.register_pairs` into its own folder and scored with the bundled Learn2Reg evaluator. Rows:

==============  =========================================================================
prealign        search + keypoint/RANSAC pre-alignment only (``stages="prealign"``)
lncc            + affine optimisation with the LNCC phase only (``nmi_iterations=0``)
nmi             + affine optimisation with the NMI phase only (``lncc_iterations=0``)
full            FIDE as submitted: LNCC then NMI, editing alpha = 1, affine output
editing-off     full with ``alpha=0``: the field moves freely, its affine is fitted at the end
deformable      full + fide's regularised deformable residual (``stages="deformable"``)
restarts-1      full with one start
restarts-3      full with three starts
handcrafted     full with MIND-SSC features
learned         full with the B-NCE encoders; "n/a (no weights)" without a checkpoint
==============  =========================================================================

Columns: mean and median TRE over pairs (each pair's mean over its landmarks), pairs under 2 px (count and
fraction), seconds per pair (the runner's wall time), failed pairs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from evaluation.evaluation import evaluate, make_config
from evaluation.inputs import case_key
from fide.config import FideConfig, config_from_dict
from fide.features.select import resolve_encoders
from fide.io import Dataset
from fide.runner import register_pairs

__all__ = ["Variant", "VARIANTS", "variant_config", "run_ablation", "COLUMNS"]

logger = logging.getLogger(__name__)

COLUMNS = [
    "variant",
    "description",
    "pairs",
    "failed",
    "mean_tre",
    "median_tre",
    "under_2px",
    "under_2px_frac",
    "s_per_pair",
    "note",
]


@dataclass(frozen=True)
class Variant:
    """One row: a name, what it tests, the config change and the features it forces (None = the base's)."""

    name: str
    description: str
    change: Callable[[FideConfig], None]
    features: str | None = None  # "learned" | "handcrafted" | None


def _set(**changes) -> Callable[[FideConfig], None]:
    """A config change: ``section__field=value`` keywords (``stages=...`` for the top level)."""

    def change(cfg: FideConfig) -> None:
        for key, value in changes.items():
            section, _, name = key.rpartition("__")
            setattr(getattr(cfg, section) if section else cfg, name, value)

    return change


_AFFINE = {"stages": "affine"}
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("prealign", "pre-alignment only", _set(stages="prealign")),
        Variant("lncc", "+ LNCC only", _set(**_AFFINE, optimise__nmi_iterations=0)),
        Variant("nmi", "+ NMI only", _set(**_AFFINE, optimise__lncc_iterations=0)),
        Variant("full", "full (LNCC + NMI, editing)", _set(**_AFFINE)),
        Variant("editing-off", "full, editing off (alpha 0)", _set(**_AFFINE, optimise__alpha=0.0)),
        Variant("deformable", "full + deformable residual", _set(stages="deformable", deformable__enabled=True)),
        Variant("restarts-1", "full, 1 restart", _set(**_AFFINE, optimise__restarts=1)),
        Variant("restarts-3", "full, 3 restarts", _set(**_AFFINE, optimise__restarts=3)),
        Variant("handcrafted", "full, handcrafted (MIND) features", _set(**_AFFINE), "handcrafted"),
        Variant("learned", "full, learned (B-NCE) features", _set(**_AFFINE), "learned"),
    ]
}


def variant_config(base: FideConfig, variant: Variant) -> FideConfig:
    """A deep copy of ``base`` with ``variant``'s change applied (``base`` is left untouched)."""
    cfg = config_from_dict(json.loads(json.dumps(base.to_dict())))
    variant.change(cfg)
    if variant.features is not None:
        cfg.encoder.features = variant.features
    FideConfig.__post_init__(cfg)  # re-validate stages
    return cfg


def _score(dataset: Dataset, split: str, pairs, folder: Path) -> tuple[dict[str, float], str]:
    """Per-pair mean TRE of the fields in ``folder`` (empty with a note when the split has no landmarks)."""
    if split not in ("val", "test"):
        return {}, f"no TRE for split {split!r}"
    config = make_config(dataset.path, split)
    if not any(m["metric"] == "tre" for m in config["evaluation_methods"]):
        return {}, "no landmarks"
    config["evaluation_methods"] = [m for m in config["evaluation_methods"] if m["metric"] == "tre"]
    # the selected pairs that have a field (a pair whose fixed image is unreadable has none); keys as Pair.name
    wanted = {p.name for p in pairs if (folder / p.disp_name).is_file()}
    config["eval_pairs"] = [e for e in config["eval_pairs"] if case_key(e) in wanted]
    note = "" if len(wanted) == len(pairs) else f"{len(pairs) - len(wanted)} pairs without a field"
    if not config["eval_pairs"]:
        return {}, note or "no fields"
    result = evaluate(folder, dataset.root, config)
    name = next(m["name"] for m in config["evaluation_methods"])
    return {case: values[name]["mean"] for case, values in result["cases"].items()}, note


def _row(variant: Variant, pairs, table: pd.DataFrame, tre: dict[str, float], note: str) -> dict:
    values = np.array([tre[p.name] for p in pairs if p.name in tre], dtype=np.float64)
    scored = len(values) > 0
    return {
        "variant": variant.name,
        "description": variant.description,
        "pairs": len(pairs),
        "failed": int((table["status"] == "failed").sum()),
        "mean_tre": float(values.mean()) if scored else math.nan,
        "median_tre": float(np.median(values)) if scored else math.nan,
        "under_2px": int((values < 2).sum()) if scored else -1,
        "under_2px_frac": float((values < 2).mean()) if scored else math.nan,
        "s_per_pair": float(table["seconds"].mean()) if len(table) else math.nan,
        "note": note,
    }


def run_ablation(
    dataset: Dataset,
    workdir: str | Path,
    base: FideConfig | None = None,
    *,
    variants: Sequence[str] | None = None,
    split: str | None = None,
    num_pairs: int | None = None,
    device: torch.device | None = None,
) -> pd.DataFrame:
    """Run the variants on the first ``num_pairs`` pairs of ``split`` and tabulate them.

    Fields go to ``workdir/<variant>/`` with the variant's ``config.json``; a rerun with the same config resumes
    (valid fields are kept), a changed config recomputes. Variants whose config equals an earlier one's reuse its row.

    Args:
        dataset: the parsed descriptor.
        workdir: folder for the variants' outputs.
        base: the config every variant modifies (defaults when None).
        variants: names from :data:`VARIANTS`, in table order; all when None.
        split: "val", "test" or "train"; the dataset's default when None.
        num_pairs: the first N pairs of the split; all when None.
        device: compute device.

    Returns:
        One row per variant, columns :data:`COLUMNS`; ``under_2px`` is -1 and the TRE columns NaN without landmarks.

    Raises:
        ValueError: an unknown variant name or ``num_pairs`` < 1.
    """
    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}, expected some of {list(VARIANTS)}")
    if num_pairs is not None and num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    base = base or FideConfig()
    split = split or dataset.default_split()
    pairs = dataset.split(split)[:num_pairs]
    workdir = Path(workdir)
    rows, done = [], {}
    for name in names:
        variant = VARIANTS[name]
        cfg = variant_config(base, variant)
        key = json.dumps([cfg.to_dict(), variant.features], sort_keys=True, default=str)
        if key in done:
            rows.append(
                {
                    **done[key],
                    "variant": name,
                    "description": variant.description,
                    "note": "same as " + done[key]["variant"],
                }
            )
            continue
        try:
            encoders = resolve_encoders(cfg.encoder, device)
        except (FileNotFoundError, ValueError) as err:
            logger.warning("%s: skipped (%s)", name, str(err).splitlines()[0])
            rows.append(_row(variant, pairs, pd.DataFrame({"status": [], "seconds": []}), {}, "n/a (no weights)"))
            continue
        folder = workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        config_file = folder / "config.json"
        stored = config_file.read_text() if config_file.is_file() else ""
        current = json.dumps({"config": cfg.to_dict(), "features": variant.features}, indent=1, default=str)
        changed = stored != current
        config_file.write_text(current)
        logger.info(
            "ablation %s: %s on %d pairs%s",
            name,
            variant.description,
            len(pairs),
            " (config changed: recompute)" if changed and stored else "",
        )
        table = register_pairs(pairs, folder, cfg, device=device, encoders=encoders, resume=not changed)
        tre, note = _score(dataset, split, pairs, folder)
        rows.append(_row(variant, pairs, table, tre, note))
        done[key] = rows[-1]
    return pd.DataFrame(rows, columns=COLUMNS)
