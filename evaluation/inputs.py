"""Reading submissions and ground truth in the Learn2Reg layout: pair IDs, file names, fields, landmarks.

Naming and formats follow the official evaluator (MDL-UzL/L2R ``evaluation/evaluation.py`` and ``utils.py``,
eval_version "2.0"), extended to 2D fields.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "case_key",
    "disp_names",
    "find_disp_file",
    "landmark_paths",
    "load_disp",
    "load_landmarks",
    "normalise_disp",
    "pair_ids",
]

# Same characters as upstream's slices [-16:-12] (case) and [-11:-7] (modality) for well-formed names.
_PAIR_ID_RE = re.compile(r"_([^_/\\]{4})_([^_/\\]{4})\.nii\.gz$")
_SHORT_NAME_MODALITIES = ("0000", "0001")  # only this (fixed, moving) pair may use disp_<FIX>_<MOV>


def pair_ids(image_path: str) -> tuple[str, str]:
    """(case, modality) of ``.../<TASK>_<CASE4>_<MOD4>.nii.gz``, e.g. ("0011", "0000")."""
    match = _PAIR_ID_RE.search(image_path)
    if match is None:
        raise ValueError(f"pair path {image_path!r}: expected a name ending in _<CASE4>_<MOD4>.nii.gz")
    return match.group(1), match.group(2)


def case_key(pair: dict[str, str]) -> str:
    """Result key of a pair, as upstream: ``<FIX>_<FMOD><--<MOV>_<MMOD>``, e.g. "0011_0000<--0011_0001"."""
    (fs, fm), (ms, mm) = pair_ids(pair["fixed"]), pair_ids(pair["moving"])
    return f"{fs}_{fm}<--{ms}_{mm}"


def disp_names(pair: dict[str, str]) -> list[str]:
    """Base names to try, in upstream order: the short form (only for 0000 <- 0001) before the long form."""
    (fs, fm), (ms, mm) = pair_ids(pair["fixed"]), pair_ids(pair["moving"])
    names = [f"disp_{fs}_{fm}_{ms}_{mm}"]
    if (fm, mm) == _SHORT_NAME_MODALITIES:
        names.insert(0, f"disp_{fs}_{ms}")
    return names


def find_disp_file(disp_dir: str | Path, pair: dict[str, str]) -> Path | None:
    """The displacement file of a pair, ``.npz`` before ``.nii.gz``, or None if there is none."""
    for name in disp_names(pair):
        for ext in (".npz", ".nii.gz"):
            path = Path(disp_dir) / f"{name}{ext}"
            if path.is_file():
                return path
    return None


def landmark_paths(gt_root: str | Path, pair: dict[str, str], dest: str) -> tuple[Path, Path]:
    """(fixed, moving) landmark CSVs: ``images`` -> ``dest`` and ``.nii.gz`` -> ``.csv`` in the pair paths.

    As upstream, when the modalities differ and are not (0000, 0001), both modality strings are appended to
    ``dest`` (e.g. ``keypoints`` -> ``keypoints00000002``).
    """
    (_, fm), (_, mm) = pair_ids(pair["fixed"]), pair_ids(pair["moving"])
    if fm != mm and (fm, mm) != _SHORT_NAME_MODALITIES:
        dest = f"{dest}{min(fm, mm)}{max(fm, mm)}"
    return tuple(  # type: ignore[return-value]
        Path(gt_root) / pair[role].replace("images", dest).replace(".nii.gz", ".csv") for role in ("fixed", "moving")
    )


def load_disp(path: str | Path) -> np.ndarray:
    """Read a displacement file as stored: ``.npz`` (exactly one array, cast to float32) or NIfTI (float64).

    The NIfTI affine and header are ignored, as upstream.
    """
    path = Path(path)
    if path.name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as npz:
            if len(npz.files) != 1:
                raise ValueError(f"{path}: expected exactly one array in the .npz, found {len(npz.files)}")
            return npz[npz.files[0]].astype(np.float32, copy=False)
    if path.name.endswith(".nii.gz"):
        return np.asarray(nib.load(path).get_fdata())
    raise ValueError(f"{path}: expected a .npz or .nii.gz displacement file")


def normalise_disp(disp: np.ndarray, spatial_shape: tuple[int, ...], name: str = "disp") -> np.ndarray:
    """Bring a stored field to channel-last (H, W, 2) or (X, Y, Z, 3); nothing is resampled.

    Args:
        disp: 2D: (H, W, 1, 2), (H, W, 2) or (2, H, W); 3D: (X, Y, Z, 3). Voxels, fixed -> moving.
        spatial_shape: (H, W) or (X, Y, Z) of the fixed image.
        name: file or pair named in the error message.

    Raises:
        ValueError: the shape matches none of the accepted layouts for ``spatial_shape``.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if len(spatial_shape) == 3:
        accepted = {(*spatial_shape, 3): lambda d: d}
    elif len(spatial_shape) == 2:
        accepted = {
            (*spatial_shape, 1, 2): lambda d: d[:, :, 0, :],
            (*spatial_shape, 2): lambda d: d,
            (2, *spatial_shape): lambda d: np.moveaxis(d, 0, -1),
        }
    else:
        raise ValueError(f"spatial_shape: expected 2 or 3 axes, found {spatial_shape}")
    if disp.shape not in accepted:
        expected = " or ".join("x".join(map(str, s)) for s in accepted)
        raise ValueError(f"{name}: expected shape {expected}, found {'x'.join(map(str, disp.shape))}")
    return accepted[disp.shape](disp)


def load_landmarks(path: str | Path, spatial_dims: int) -> np.ndarray:
    """(N, spatial_dims) voxel coordinates in array-axis order from a headerless CSV (``np.loadtxt``).

    In 2D an all-zero third column (z = 0, written for the 3D evaluator) is dropped.
    """
    lms = np.loadtxt(path, delimiter=",", ndmin=2)
    if spatial_dims == 2 and lms.shape[1] == 3 and not lms[:, 2].any():
        lms = lms[:, :2]
    if lms.shape[1] != spatial_dims:
        extra = " (or 3 with an all-zero third column)" if spatial_dims == 2 else ""
        raise ValueError(f"{path}: expected {spatial_dims} columns{extra}, found {lms.shape[1]}")
    return lms
