"""Challenge displacement fields on disk: ``disp_*.nii.gz``, (H, W, 1, 2) float32, pixels, fixed to moving."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch

from .dataset import DatasetError
from .images import to_nibabel_order

__all__ = ["write_disp", "write_nifti", "read_disp", "atomic_path"]

# a write that fails with less free space than this is reported as a full disk
_LOW_DISK_BYTES = 64 * 2**20


def atomic_path(path: Path) -> Path:
    """Temporary sibling of ``path`` with the same suffix, renamed over ``path`` once complete."""
    suffix = "".join(path.suffixes) or ".tmp"
    return path.with_name(f".{path.name[: -len(suffix)] if suffix else path.name}.{os.getpid()}.part{suffix}")


def write_disp(path: str | Path, disp: torch.Tensor | np.ndarray) -> Path:
    """Write a displacement field in the challenge layout, atomically.

    Args:
        path: destination ``.nii.gz``.
        disp: (2, H, W) or (1, 2, H, W), pixels, array order, fixed to moving.

    Returns:
        The written path. The file has shape (H, W, 1, 2), float32 and an identity affine (nibabel).
    """
    path = Path(path)
    array = disp.detach().cpu().numpy() if isinstance(disp, torch.Tensor) else np.asarray(disp)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[0] != 2:
        raise ValueError(f"disp must have shape (2, H, W), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: refusing to write a displacement field with NaN or infinite values")
    return write_nifti(path, np.transpose(array.astype(np.float32), (1, 2, 0))[:, :, None, :])  # (H, W, 1, 2)


def write_nifti(path: str | Path, array: np.ndarray) -> Path:
    """Write an array given in nibabel axis order as a compressed NIfTI with an identity affine, atomically.

    Args:
        path: destination ``.nii.gz``.
        array: any shape of 2 to 4 axes, nibabel order (e.g. (H, W, 1) grey, (H, W, 1, 3) RGB, (H, W, 1, 2) field).
    """
    path = Path(path)
    # SimpleITK wants reversed index order; LPS direction diag(-1, -1, 1, ...) is the RAS identity nibabel reads back
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array)), isVector=False)
    image.SetDirection(np.diag([-1.0, -1.0] + [1.0] * (array.ndim - 2)).flatten().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        os.replace(tmp, path)
    except RuntimeError as err:  # ITK's multi-line exception; the user needs the file and the cause
        free = shutil.disk_usage(path.parent).free
        full = free < _LOW_DISK_BYTES
        cause = f"disk full, {free} bytes free" if full else str(err).strip().splitlines()[-1][:200]
        raise OSError(f"{path}: cannot write the file ({cause})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_disp(path: str | Path, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Read a field written in (H, W, 1, 2) or (H, W, 2) layout.

    Args:
        path: ``.nii.gz`` file.
        shape: expected (H, W); a mismatch is an error.

    Returns:
        (2, H, W) float32, pixels, fixed to moving.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: displacement field not found")
    try:  # nibabel, as the evaluator: SimpleITK returns a truncated .nii.gz without an error
        array = np.asanyarray(nib.load(str(path)).dataobj) if path.name.endswith((".nii", ".nii.gz")) else None
        if array is None:
            array = to_nibabel_order(sitk.ReadImage(str(path)))
    except Exception:  # nibabel raises EOFError, zlib.error, ImageFileError...; SimpleITK RuntimeError
        raise DatasetError(f"{path}: cannot read displacement field (corrupt, truncated or not NIfTI)") from None
    if array.ndim == 4 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 3 or array.shape[-1] != 2:
        raise DatasetError(f"{path}: expected a field of shape (H, W, 1, 2), found {array.shape}")
    if shape is not None and tuple(array.shape[:2]) != tuple(shape):
        raise DatasetError(f"{path}: expected a field of shape {(*shape, 1, 2)}, found {array.shape[:2] + (1, 2)}")
    if not np.isfinite(array).all():
        raise DatasetError(f"{path}: displacement field has NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1).astype(np.float32)))
