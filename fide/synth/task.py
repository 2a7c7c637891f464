"""A complete synthetic Learn2Reg task folder: images, landmarks, descriptor and dense ground truth.

Layout (as the challenge's, see ``shared/spec/learn2reg-format.md`` §1-§4)::

    OUT/<NAME>_dataset.json
    OUT/imagesTr/<NAME>_<CASE>_0000.nii.gz      SHG, fixed, (H, W, 1) uint8
    OUT/imagesTr/<NAME>_<CASE>_0001.nii.gz      BF, moving, (H, W, 1, 3) uint8
    OUT/landmarksTr/<NAME>_<CASE>_000{0,1}.csv  val pairs: (N, 2) array-order pixels, row n ↔ row n
    OUT/groundtruth/disp_<CASE>_<CASE>.nii.gz   val pairs: true fixed→moving field, (H, W, 1, 2) float32
    OUT/groundtruth/transforms.json             val/test pairs: the drawn affine and warp parameters
    OUT/evaluation_config.json                  TRE_lm + LogJacDetStd on registration_val (project evaluator)

Cases are numbered training pairs first (0001...), then val, then test pairs. Every pair draws from its own generator
seeded by (seed, split, index), so val pair k is the same image whatever the number of pairs requested.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from fide.config import REFERENCE_SIDE_PX
from fide.io import atomic_path, write_disp, write_landmarks, write_nifti

from .misalign import pick_landmarks, random_misalignment, warp_to_moving
from .regimes import adjust_contrast, look_up_regime, upsampling_blur
from .tissue import make_aligned_pair

__all__ = ["make_task", "make_pair", "write_image"]

_log = logging.getLogger(__name__)
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write a (C, H, W) uint8 image as a challenge NIfTI with an identity affine (nibabel), atomically.

    C = 1 gives nibabel shape (H, W, 1) (the SHG layout); C = 3 gives (H, W, 1, 3) (the RGB bright-field layout).
    """
    path = Path(path)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be (C, H, W) uint8 with C in {{1, 3}}, got {image.shape} {image.dtype}")
    # (C, H, W) -> nibabel (H, W, 1) for grey, (H, W, 1, 3) for RGB
    on_disk = image[0][:, :, None] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))[:, :, None, :]
    write_nifti(path, on_disk)
    return path


def make_pair(
    split: str,
    index: int,
    size: int,
    seed: int,
    *,
    scale_range: tuple[float, float] = (0.85, 1.15),
    regime: str = "core",
    warp_px: float = 4.0,
    length_scale: float | None = None,
) -> dict:
    """Generate pair ``index`` of ``split`` ("train", "val" or "test"); deterministic in (seed, split, index).

    Args:
        regime: a key of :data:`fide.synth.regimes.REGIMES` (how the bright field is moved, cut and exported);
            ``scale_range`` applies where the regime does not fix the scale.
        warp_px: largest displacement of the smooth warp on top of the affine, pixels at 834 px (scaled with
            ``size``; 0: the pair is exactly affine, so any TRE left is the registration's own error).
        length_scale: pixels per pixel of an 834 px image for the tissue's structures (fibre widths, texture
            scales; :func:`fide.synth.tissue.make_aligned_pair`); None: ``size / 834``, the core at every size
            drawn as at 834 px and only its pixels smaller. The warp and the core's outline follow ``size`` either way.

    Returns:
        dict with ``fixed`` (1, H, W) uint8 SHG, ``moving`` (3, H, W) uint8 BF, and for "val"/"test" also
        ``misalignment``, ``fixed_points`` / ``moving_points`` (N, 2) and ``disp`` (2, H, W) float32 fixed→moving;
        "train" pairs are aligned.
    """
    if split not in _SPLIT_STREAM:
        raise ValueError(f"split must be one of {sorted(_SPLIT_STREAM)}, got {split!r}")
    setting = look_up_regime(regime)
    tissue_rng, align_rng, effects_rng = (
        np.random.default_rng([seed, _SPLIT_STREAM[split], index, k]) for k in range(3)
    )
    # a fourth stream, drawn only by regimes that use it: the other regimes' pairs stay byte-identical
    faint = bool(setting.faint_prob) and np.random.default_rng([seed, _SPLIT_STREAM[split], index, 3]).random() < (
        setting.faint_prob
    )
    appearance = {"independent_texture": setting.independent_texture, "faint": faint}
    scale = size / REFERENCE_SIDE_PX if length_scale is None else length_scale
    if split == "train" or not setting.patch:
        view = size
        shg, bf, info = make_aligned_pair(size, tissue_rng, length_scale=scale, **appearance)
    else:  # a larger field of view at this size's length scale; its centre is cut out after the move
        view = size + 2 * round((setting.patch_margin - 1) * size / 2)
        shg, bf, info = make_aligned_pair(view, tissue_rng, length_scale=scale, **appearance)
    pair: dict = {"fixed": shg, "moving": bf, "tissue": info}
    if split == "train":
        return pair
    mis = random_misalignment(
        view,
        align_rng,
        rotation_deg=setting.rotation_deg,
        scale_range=setting.scale_range or scale_range,
        shear=setting.shear,
        anisotropy=setting.anisotropy,
        shift_frac=setting.shift_frac * size / view,
        warp_px=warp_px * size / view,
        mirror=setting.mirror,
    )
    fill = 255.0 if align_rng.random() < 1 - setting.black_fill_prob else 0.0  # corners: mostly white
    stack = np.concatenate([bf.astype(np.float32), info.tissue[None], info.landmark_map[None]])
    moved = warp_to_moving(stack, mis, fill=(fill, fill, fill, 0.0, 0.0))
    tissue = info.tissue
    if view != size:
        offset = (view - size) // 2
        window = (slice(None), slice(offset, offset + size), slice(offset, offset + size))
        shg, moved, tissue = shg[window], moved[window], tissue[window[1:]]
        mis = mis.cropped(float(offset))
    fixed_pts, moving_pts = pick_landmarks(moved[4], moved[3], tissue, mis, align_rng)
    moving = np.clip(np.rint(moved[:3]), 0, 255).astype(np.uint8)
    effects = []
    if setting.contrast_prob and effects_rng.random() < setting.contrast_prob:
        shg = adjust_contrast(shg, effects_rng)
        effects.append("contrast")
    if setting.blur_prob and effects_rng.random() < setting.blur_prob:
        if effects_rng.random() < 0.5:
            shg, effects = upsampling_blur(shg, effects_rng), [*effects, "blur-fixed"]
        else:
            moving, effects = upsampling_blur(moving, effects_rng), [*effects, "blur-moving"]
    pair.update(
        fixed=np.ascontiguousarray(shg),
        moving=moving,
        misalignment=mis,
        fixed_points=fixed_pts,
        moving_points=moving_pts,
        disp=mis.disp_fixed_to_moving((size, size)),
        fill=fill,
        effects=effects,
    )
    return pair


def _descriptor(name: str, size: int, cases: dict[str, list[str]]) -> dict:
    def image(case: str, mod: int) -> str:
        return f"./imagesTr/{name}_{case}_{mod:04d}.nii.gz"

    def pairs(split: str) -> list[dict]:
        return [{"fixed": image(c, 0), "moving": image(c, 1)} for c in cases[split]]

    training = [{"image": image(c, m)} for c in cases["train"] for m in (0, 1)]
    return {
        "name": name,
        "release": "1.0",
        "description": "Synthetic SHG (fixed) / H&E bright-field (moving) tissue-microarray cores made by `fide synth`",
        "licence": "CC-BY 4.0",
        "reference": "fide synthetic data; appearance sized by shared/spec/shg-bf-appearance.md",
        "pairings": "paired",
        "provided_data": {"0": ["image", "landmarks"], "1": ["image", "landmarks"]},
        "registration_direction": {"fixed": 0, "moving": 1},
        "modality": {"0": "SHG", "1": "BF"},
        "labels": {},
        "tensorImageSize": {"0": "2D"},
        "tensorImageShape": {"0": [size, size, 1]},
        "numTraining": len(training),
        "training": training,
        "numPairedTraining": len(cases["train"]),
        "training_paired_images": pairs("train"),
        "numRegistration_val": len(cases["val"]),
        "registration_val": pairs("val"),
        "numRegistration_test": len(cases["test"]),
        "registration_test": pairs("test"),
    }


def _write_json(path: Path, content: dict) -> None:
    tmp = atomic_path(path)
    try:
        tmp.write_text(json.dumps(content, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_eval_config(out: Path, descriptor: Path) -> Path | None:
    """Evaluation config from the project evaluator, when it is installed in this checkout."""
    try:
        from evaluation.evaluation import make_config
    except ImportError:
        _log.info("evaluation.evaluation.make_config not available: no evaluation config written")
        return None
    config = make_config(descriptor, "val")
    path = out / "evaluation_config.json"  # the upstream evaluator's default name inside the ground-truth folder
    if isinstance(config, dict):
        _write_json(path, config)
    return path


def make_task(
    out_dir: str | Path,
    pairs: int,
    size: int = 834,
    seed: int = 0,
    *,
    train_pairs: int = 0,
    test_pairs: int = 0,
    name: str = "SYNTHSHGBF",
    scale_range: tuple[float, float] = (0.85, 1.15),
    regime: str = "core",
    warp_px: float = 4.0,
) -> Path:
    """Write a synthetic SHG/BF Learn2Reg task folder.

    Args:
        out_dir: task folder (created; existing files of the same names are replaced).
        pairs: number of ``registration_val`` pairs (misaligned, with landmarks and ground truth).
        size: image side, pixels (challenge: 834).
        seed: base seed; the same seed gives byte-identical images.
        train_pairs: number of aligned ``training_paired_images`` pairs.
        test_pairs: number of misaligned ``registration_test`` pairs without landmarks.
        name: task name and file prefix.
        scale_range: (low, high) isotropic scale of the val/test affines, moving pixels per fixed pixel.
        regime: acquisition regime of the val/test pairs, a key of :data:`fide.synth.regimes.REGIMES`.
        warp_px: largest displacement of the smooth warp, pixels at 834 px (scaled with ``size``); 0 for exactly
            affine pairs.

    Returns:
        Path of ``<out_dir>/<name>_dataset.json``.
    """
    for label, value in (("pairs", pairs), ("train_pairs", train_pairs), ("test_pairs", test_pairs)):
        if value < 0:
            raise ValueError(f"{label} must be >= 0, got {value}")
    if pairs + train_pairs + test_pairs == 0:
        raise ValueError("nothing to generate: pairs, train_pairs and test_pairs are all 0")
    if pairs + train_pairs + test_pairs > 9999:
        raise ValueError(f"at most 9999 cases fit the 4-digit case ids, got {pairs + train_pairs + test_pairs}")
    if not name or "_" in name or "/" in name:
        raise ValueError(f"name must be non-empty without '_' or '/', got {name!r}")
    if not warp_px >= 0:
        raise ValueError(f"warp_px must be >= 0, got {warp_px}")
    look_up_regime(regime)  # an unknown regime fails before anything is written
    out = Path(out_dir)
    counts = {"train": train_pairs, "val": pairs, "test": test_pairs}
    cases: dict[str, list[str]] = {}
    transforms: dict[str, dict] = {}
    next_case = 1
    for split, count in counts.items():
        cases[split] = []
        for index in range(count):
            case = f"{next_case:04d}"
            next_case += 1
            cases[split].append(case)
            pair = make_pair(split, index, size, seed, scale_range=scale_range, regime=regime, warp_px=warp_px)
            write_image(out / "imagesTr" / f"{name}_{case}_0000.nii.gz", pair["fixed"])
            write_image(out / "imagesTr" / f"{name}_{case}_0001.nii.gz", pair["moving"])
            if split != "train":
                mis = pair["misalignment"]
                transforms[case] = {"split": split, "affine_fixed_to_moving": mis.affine.tolist(), **mis.params}
                transforms[case].update(corner_fill=pair["fill"], regime=regime, effects=pair["effects"])
            if split == "val":
                write_landmarks(out / "landmarksTr" / f"{name}_{case}_0000.csv", pair["fixed_points"])
                write_landmarks(out / "landmarksTr" / f"{name}_{case}_0001.csv", pair["moving_points"])
                write_disp(out / "groundtruth" / f"disp_{case}_{case}.nii.gz", pair["disp"])
            _log.debug("case %s (%s %d): %s", case, split, index, pair["tissue"].params)
    if transforms:
        (out / "groundtruth").mkdir(parents=True, exist_ok=True)
        _write_json(out / "groundtruth" / "transforms.json", transforms)
    descriptor = out / f"{name}_dataset.json"
    _write_json(descriptor, _descriptor(name, size, cases))
    if cases["val"]:
        _write_eval_config(out, descriptor)
    return descriptor
