"""Learn2Reg evaluator for 2D and 3D displacement fields; standalone (imports nothing from fide).

Mirrors the official MDL-UzL/L2R ``evaluation/evaluation.py`` (eval_version "2.0"): the same CLI argument
names, config layout, displacement-file naming, landmark paths, metric formulas and output JSON. Additions:

- 2D fields: (H, W, 1, 2), (H, W, 2) or (2, H, W); the task is 2D when ``expected_shape`` ends in 2.
- Per-pair expected shape: the spatial shape of each pair's FIXED image header. The config's ``expected_shape``
  is used only for its last entry (2 or 3) and for pairs whose fixed image is absent from the ground-truth
  folder, because pairs of one 2D task may differ in size (e.g. HISTOLM: 661x892, 660x892, 660x895).
- SDlogJ entries: ``<name>`` is the textbook std(log det J); ``<name>_l2r`` reproduces upstream's
  std(log(det J + 3)); ``num_foldings`` counts det J <= 0; ``num_foldings_l2r`` is upstream's count (always 0).
- Every input (fields, landmarks, images) is checked before computing; a per-case CSV and a text table.

Usage::

    python evaluation/evaluation.py -i DISP_DIR -d GT_ROOT -o OUT.json -c CONFIG.json [-v]

``-c`` also accepts a ``<TASK>_dataset.json``; its config is built with :func:`make_config` (``--split``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

if __package__:
    from .inputs import case_key, disp_names, find_disp_file, landmark_paths, load_disp, load_landmarks, normalise_disp
    from .metrics import (
        aggregate,
        compute_tre,
        jacobian_determinant,
        num_foldings,
        num_foldings_l2r,
        sdlogj,
        sdlogj_l2r,
    )
else:  # run as a script, ``python evaluation/evaluation.py``: this file's folder is sys.path[0]
    from inputs import case_key, disp_names, find_disp_file, landmark_paths, load_disp, load_landmarks, normalise_disp
    from metrics import aggregate, compute_tre, jacobian_determinant, num_foldings, num_foldings_l2r, sdlogj, sdlogj_l2r

__all__ = [
    "EVAL_VERSION",
    "cases_table",
    "evaluate",
    "format_table",
    "load_config",
    "main",
    "make_config",
    "write_outputs",
]

logger = logging.getLogger(__name__)

EVAL_VERSION = "2.0"
_SPLITS = {"val": "registration_val", "test": "registration_test"}
_SUPPORTED_METRICS = ("tre", "sdlogj")
_UNSUPPORTED_METRICS = ("dice", "hd95")  # valid upstream, need label warping; not implemented here


# ---------------------------------------------------------------------------------------------------------- config
def make_config(dataset_json_path: str | Path, split: str = "val") -> dict[str, Any]:
    """Evaluation config (upstream layout, eval_config_version 0.2) from a Learn2Reg ``<TASK>_dataset.json``.

    Methods: ``TRE_lm`` (metric "tre", dest "landmarks") when every pair has landmark CSVs next to the
    descriptor, then ``LogJacDetStd`` (metric "sdlogj"). ``expected_shape`` is (H, W, 1, 2) in 2D and
    (X, Y, Z, 3) in 3D, from ``tensorImageShape["0"]``; it describes the first pair only (see module docstring).

    Args:
        dataset_json_path: the descriptor; pair paths are relative to its folder.
        split: "val" (``registration_val``) or "test" (``registration_test``).
    """
    path = Path(dataset_json_path)
    if split not in _SPLITS:
        raise ValueError(f"split: expected one of {sorted(_SPLITS)}, found {split!r}")
    descriptor = json.loads(path.read_text(encoding="utf-8"))
    pairs = [{"fixed": p["fixed"], "moving": p["moving"]} for p in descriptor.get(_SPLITS[split]) or []]
    if not pairs:
        raise ValueError(f"{path}: '{_SPLITS[split]}' is missing or empty; nothing to evaluate for split {split!r}")
    root = path.parent

    size = descriptor.get("tensorImageSize", {}).get("0")
    shape = descriptor.get("tensorImageShape", {}).get("0")
    if size is None or shape is None:  # tolerated missing keys: read the first fixed image instead
        header_shape = nib.load(root / pairs[0]["fixed"]).shape
        size = size or ("2D" if len(header_shape) == 2 or header_shape[2] == 1 else "3D")
        shape = shape or list(header_shape[:3])
        logger.info("%s: no tensorImageSize/Shape; using %s, %s from the first fixed image", path, size, shape)
    if size not in ("2D", "3D"):
        raise ValueError(f"{path}: tensorImageSize['0'] expected '2D' or '3D', found {size!r}")
    expected_shape = [*map(int, shape[:2]), 1, 2] if size == "2D" else [*map(int, shape[:3]), 3]

    methods = []
    csvs = [p for pair in pairs for p in landmark_paths(root, pair, "landmarks")]
    missing = [str(p) for p in csvs if not p.is_file()]
    if not missing:
        methods.append({"name": "TRE_lm", "metric": "tre", "dest": "landmarks"})
    elif len(missing) < len(csvs):
        raise ValueError(f"{path}: landmark CSVs exist for some pairs only; missing: {missing}")
    else:
        logger.info("%s: no landmark CSVs, so no TRE", path)
    methods.append({"name": "LogJacDetStd", "metric": "sdlogj"})
    return {
        "task_name": descriptor["name"],
        "evaluation_methods": methods,
        "expected_shape": expected_shape,
        "eval_pairs": pairs,
        "eval_config_version": 0.2,
        "masked_evaluation": False,
    }


def load_config(path: str | Path, split: str = "val") -> dict[str, Any]:
    """Read an evaluation config, or build one with :func:`make_config` if ``path`` is a dataset descriptor."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if "eval_pairs" in data:
        return data
    if any(key in data for key in _SPLITS.values()):
        logger.info("%s is a dataset descriptor; evaluating its %r pairs", path, split)
        return make_config(path, split)
    raise ValueError(f"{path}: expected an evaluation config (with 'eval_pairs') or a <TASK>_dataset.json")


def _check_config(config: dict[str, Any]) -> int:
    """Validate the config; return the number of spatial axes (the last entry of ``expected_shape``)."""
    missing = [k for k in ("task_name", "evaluation_methods", "expected_shape", "eval_pairs") if k not in config]
    if missing:
        raise ValueError(f"config: missing keys {missing}")
    names = [m["name"] for m in config["evaluation_methods"]]
    if len(set(names)) != len(names):
        raise ValueError(f"config: evaluation method names have to be unique, found {names}")
    for method in config["evaluation_methods"]:
        if method["metric"] in _UNSUPPORTED_METRICS:
            raise NotImplementedError(f"config: metric {method['metric']!r} is not implemented in this evaluator")
        if method["metric"] not in _SUPPORTED_METRICS:
            raise ValueError(f"config: metric expected one of {_SUPPORTED_METRICS}, found {method['metric']!r}")
        if method["metric"] == "tre" and "dest" not in method:
            raise ValueError(f"config: tre method {method['name']!r} needs a 'dest' (e.g. 'landmarks')")
    spatial_dims = int(config["expected_shape"][-1])
    if spatial_dims not in (2, 3):
        raise ValueError(f"config: expected_shape must end in 2 or 3 components, found {config['expected_shape']}")
    if not config["eval_pairs"]:
        raise ValueError("config: eval_pairs is empty")
    return spatial_dims


# ------------------------------------------------------------------------------------------------------ evaluation
def _check_inputs(disp_dir: Path, gt_root: Path, config: dict[str, Any]) -> None:
    """Raise, listing every missing file, before anything is computed."""
    missing_disp, missing_gt = [], []
    for pair in config["eval_pairs"]:
        if find_disp_file(disp_dir, pair) is None:
            long_name, *short = reversed(disp_names(pair))
            missing_disp.append(long_name + (f" (or {short[0]})" if short else ""))
        for method in config["evaluation_methods"]:
            if method["metric"] == "tre":
                needed = [*landmark_paths(gt_root, pair, method["dest"]), gt_root / pair["moving"]]
                missing_gt += [str(p) for p in needed if not p.is_file() and str(p) not in missing_gt]
    if missing_disp:
        raise ValueError(f"Missing files: {missing_disp} in {disp_dir} (each as .npz or .nii.gz)")
    if missing_gt:
        raise ValueError(f"Missing ground-truth files: {missing_gt}")


def _spatial_shape(gt_root: Path, pair: dict[str, str], config: dict[str, Any], spatial_dims: int) -> tuple[int, ...]:
    fixed_path = gt_root / pair["fixed"]
    if fixed_path.is_file():
        return tuple(nib.load(fixed_path).shape[:spatial_dims])
    logger.debug("%s not found; expected field shape from the config", fixed_path)
    return tuple(config["expected_shape"][:spatial_dims])


def _sdlogj_mask(gt_root: Path, pair: dict[str, str], spatial_shape: tuple) -> np.ndarray | None:
    """Boolean mask of the cropped det J (True where the fixed mask equals 1, as upstream), or None."""
    mask_path = gt_root / pair["fixed"].replace("images", "masks")
    if not mask_path.is_file():
        logger.warning("Tried to use mask but did not find %s. Will evaluate without mask.", mask_path)
        return None
    mask = np.asarray(nib.load(mask_path).get_fdata())
    if mask.size != np.prod(spatial_shape):
        raise ValueError(f"{mask_path}: expected a mask of shape {spatial_shape}, found {mask.shape}")
    # np.ma masks where 1 - mask != 0 upstream, so only voxels labelled exactly 1 count; crop as det J is cropped.
    return (mask.reshape(spatial_shape) == 1)[tuple(slice(2, -2) for _ in spatial_shape)]


def _evaluate_pair(
    disp_dir: Path, gt_root: Path, pair: dict[str, str], config: dict[str, Any], spatial_dims: int
) -> dict[str, dict[str, Any]]:
    """One case's entries: {metric name: {"mean": float, "detailed": float or per-landmark list}}."""
    disp_path = find_disp_file(disp_dir, pair)
    spatial_shape = _spatial_shape(gt_root, pair, config, spatial_dims)
    disp = normalise_disp(load_disp(disp_path), spatial_shape, name=f"{disp_path} (pair {case_key(pair)})")
    if not np.isfinite(disp).all():
        logger.warning("%s holds non-finite values; its metrics will be NaN", disp_path)

    results: dict[str, dict[str, Any]] = {}
    for method in config["evaluation_methods"]:
        name = method["name"]
        if method["metric"] == "sdlogj":
            jac_det = jacobian_determinant(disp)
            mask = _sdlogj_mask(gt_root, pair, spatial_shape) if config.get("masked_evaluation") else None
            for key, value in (
                (name, sdlogj(jac_det, mask)),
                ("num_foldings", float(num_foldings(jac_det))),
                (f"{name}_l2r", sdlogj_l2r(jac_det, mask)),
                ("num_foldings_l2r", float(num_foldings_l2r(jac_det))),
            ):
                results[key] = {"mean": value, "detailed": value}
        elif method["metric"] == "tre":
            fix_path, mov_path = landmark_paths(gt_root, pair, method["dest"])
            fix_lms, mov_lms = load_landmarks(fix_path, spatial_dims), load_landmarks(mov_path, spatial_dims)
            if len(fix_lms) != len(mov_lms):
                raise ValueError(
                    f"Landmark count mismatch: {fix_path} has {len(fix_lms)} rows, {mov_path} has {len(mov_lms)}"
                )
            spacing_mov = nib.load(gt_root / pair["moving"]).header.get_zooms()[:spatial_dims]
            tre = compute_tre(fix_lms, mov_lms, disp, spacing_mov)
            results[name] = {"mean": float(tre.mean()), "detailed": [float(t) for t in tre]}
    return results


def evaluate(disp_dir: str | Path, gt_root: str | Path, config: dict[str, Any], verbose: bool = False) -> dict:
    """Score every pair of ``config`` and aggregate, as L2R ``evaluate_L2R`` does (without writing files).

    Args:
        disp_dir: folder of ``disp_<FIX>_<MOV>`` / ``disp_<FIX>_<FMOD>_<MOV>_<MMOD>`` ``.npz`` or ``.nii.gz``
            fields, voxels, array-axis order, fixed -> moving.
        gt_root: task folder the config's pair paths are relative to (images, landmarks, masks).
        config: evaluation config (upstream layout; see :func:`make_config`).
        verbose: log each case's values at INFO instead of DEBUG.

    Returns:
        {"name", "aggregates": {metric: {"mean", "std", "30"}}, "cases": {"<F>_<FM><--<M>_<MM>": {metric:
        {"mean", "detailed"}}}, "eval_version": "2.0"}. Aggregates cover the config's method names plus
        ``<sdlogj name>_l2r``; like upstream, ``num_foldings`` has per-case values only.

    Raises:
        ValueError: invalid config, missing files (all listed), wrong field shape, bad landmark files.
    """
    disp_dir, gt_root = Path(disp_dir), Path(gt_root)
    spatial_dims = _check_config(config)
    _check_inputs(disp_dir, gt_root, config)
    level = logging.INFO if verbose else logging.DEBUG
    logger.log(
        level, "Evaluate %d cases for: %s", len(config["eval_pairs"]), [m["name"] for m in config["evaluation_methods"]]
    )

    cases = {}
    for pair in config["eval_pairs"]:
        key = case_key(pair)
        cases[key] = _evaluate_pair(disp_dir, gt_root, pair, config, spatial_dims)
        logger.log(level, "case %s: %s", key, {k: round(v["mean"], 5) for k, v in cases[key].items()})

    aggregate_metrics = {}  # result name -> upstream metric type
    for method in config["evaluation_methods"]:
        aggregate_metrics[method["name"]] = method["metric"]
        if method["metric"] == "sdlogj":
            aggregate_metrics[f"{method['name']}_l2r"] = "sdlogj"
    aggregates = {
        name: aggregate([case[name]["mean"] for case in cases.values()], metric)
        for name, metric in aggregate_metrics.items()
    }
    return {"name": config["task_name"], "aggregates": aggregates, "cases": cases, "eval_version": EVAL_VERSION}


# --------------------------------------------------------------------------------------------------------- outputs
def cases_table(result: dict) -> pd.DataFrame:
    """One row per case (index = case key), one column per case entry, holding its "mean"."""
    rows = {case: {name: entry["mean"] for name, entry in values.items()} for case, values in result["cases"].items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("case")


def _resolve_json_path(json_path: str | Path) -> Path:
    """An existing folder gets a ``YYYYmmdd_HHMM.json`` inside it, as upstream."""
    json_path = Path(json_path)
    return json_path / f"{datetime.now().strftime('%Y%m%d_%H%M')}.json" if json_path.is_dir() else json_path


def write_outputs(result: dict, json_path: str | Path, csv_path: str | Path | None = None) -> tuple[Path, Path | None]:
    """Write the result JSON (indent 4, NaN allowed, as upstream) and, if ``csv_path`` is given, the per-case CSV.

    Returns:
        (JSON path written, CSV path written or None); a ``json_path`` folder gets a timestamped file inside.
    """
    json_path = _resolve_json_path(json_path)
    json_path.write_text(json.dumps(result, indent=4, allow_nan=True), encoding="utf-8")
    if csv_path is not None:
        csv_path = Path(csv_path)
        cases_table(result).to_csv(csv_path)
    return json_path, csv_path


def format_table(result: dict) -> str:
    """Plain-text report: aggregates (mean, std, "30") per metric, then every case's values."""
    aggregates = pd.DataFrame.from_dict(result["aggregates"], orient="index").rename_axis("metric")
    fmt = "{:.4f}".format
    return (
        f"{result['name']}: {len(result['cases'])} cases (eval_version {result['eval_version']})\n"
        f"{aggregates.to_string(float_format=fmt)}\n\n{cases_table(result).to_string(float_format=fmt)}"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI with the upstream argument names; prints the table and writes the JSON and a per-case CSV."""
    parser = argparse.ArgumentParser(description="Learn2Reg evaluation (2D and 3D displacement fields)")
    parser.add_argument("-i", "--input", dest="input_path", default="test", help="folder of displacement fields")
    parser.add_argument("-d", "--data", dest="gt_path", default="ground-truth", help="task folder (ground truth)")
    parser.add_argument("-o", "--output", dest="output_path", default="metrics.json", help="result JSON or folder")
    parser.add_argument(
        "-c",
        "--config",
        dest="config_path",
        default="ground-truth/evaluation_config.json",
        help="evaluation config JSON, or a <TASK>_dataset.json to build one from",
    )
    parser.add_argument("-v", "--verbose", dest="verbose", action="store_true", default=False)
    parser.add_argument("--split", choices=sorted(_SPLITS), default="val", help="pairs used with a dataset JSON")
    parser.add_argument("--csv", dest="csv_path", default=None, help="per-case CSV (default: the JSON path, .csv)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    try:
        result = evaluate(args.input_path, args.gt_path, load_config(args.config_path, args.split), args.verbose)
    except (ValueError, NotImplementedError) as exc:  # invalid submission or config: one line, no traceback
        logger.error("%s", exc)
        return 1
    json_path = _resolve_json_path(args.output_path)
    json_path, csv_path = write_outputs(result, json_path, args.csv_path or json_path.with_suffix(".csv"))
    print(format_table(result))
    logger.info("Results saved to: %s and %s", json_path, csv_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
