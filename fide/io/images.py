"""Reading 2D images into float tensors in nibabel array-axis order.

NIfTI files are read with nibabel, the reference reader of the Learn2Reg evaluator and of its axis order, because
SimpleITK's NIfTI reader silently turns NaN pixels into 0; other formats (TIFF, PNG, MHA, ...) go through SimpleITK.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch

from .dataset import DatasetError

__all__ = ["read_image", "read_spacing", "to_nibabel_order", "split_alpha", "alpha_full_scale"]


def to_nibabel_order(image: sitk.Image) -> np.ndarray:
    """SimpleITK's array is in reversed index order (z, y, x); nibabel's (the landmark order) is (i, j, k).

    Vector pixels keep their components on the last axis.
    """
    array = sitk.GetArrayViewFromImage(image)
    spatial = image.GetDimension()
    order = tuple(reversed(range(spatial))) + tuple(range(spatial, array.ndim))
    return np.ascontiguousarray(np.transpose(array, order))


def _read(path: Path) -> sitk.Image:
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise DatasetError(f"{path}: cannot read image ({reason[:200]})") from None


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def _read_array(path: Path) -> np.ndarray:
    """Pixel array in nibabel order (RGB / vector components last)."""
    if not _is_nifti(path):
        return to_nibabel_order(_read(path))
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        array = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ValueError)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatasetError(f"{path}: cannot read image ({reason[:200]})") from None
    if array.dtype.names:  # RGB24 / RGBA32 structured pixels
        array = np.stack([array[name] for name in array.dtype.names], axis=-1)
    return array


def alpha_full_scale(dtype: np.dtype) -> float:
    """The value of an opaque alpha for a pixel type: the integer maximum, 1.0 for floats."""
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def split_alpha(array: np.ndarray, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Separate the alpha channel of grey + alpha (2) or RGBA (4) pixels.

    Args:
        array: (H, W, C) pixels, any dtype, channels last.
        path: the file, for messages.

    Returns:
        The (H, W, C - 1) colour channels (C unchanged when C is 1 or 3) and the alpha in [0, 1] as (H, W)
        float32, or None when there is no alpha or it is opaque everywhere (then it is simply dropped).

    Raises:
        DatasetError: a channel count other than 1 to 4.
    """
    channels = array.shape[-1]
    if channels in (1, 3):
        return array, None
    if channels not in (2, 4):
        raise DatasetError(f"{path}: image has {channels} channels, expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    alpha = array[..., -1]
    if np.all(alpha == alpha_full_scale(array.dtype)):
        return array[..., :-1], None
    return array[..., :-1], (alpha.astype(np.float32) / alpha_full_scale(array.dtype)).clip(0, 1)


def read_image(path: str | Path) -> torch.Tensor:
    """Read a 2D grey or RGB image.

    Accepted layouts (nibabel shape): (H, W), (H, W, 1), (H, W, 3), (H, W, 1, 3), (H, W, 1, 1, 3) and RGB/vector
    pixels; any integer or float type. An alpha channel (grey + alpha, RGBA) is dropped when opaque; otherwise the
    image is composited on its background where alpha < 1: white (the type's maximum) behind RGB, as bright-field
    background, black (0) behind grey, as SHG background.

    Returns:
        (C, H, W) float32, C in {1, 3}, raw intensities, array axes as nibabel reports them.

    Raises:
        DatasetError: missing or corrupt file, a channel count other than 1 or 3, a 3D volume, bool or complex pixels,
            or NaN/inf pixels.
    """
    path = Path(path)
    array = _read_array(path)
    if array.ndim < 2:
        raise DatasetError(f"{path}: expected a 2D image, got shape {array.shape}")
    if array.dtype == np.bool_ or np.iscomplexobj(array):  # a mask, or k-space: astype would silently misread
        raise DatasetError(f"{path}: pixels are {array.dtype}, expected real grey or RGB intensities")
    height, width, rest = array.shape[0], array.shape[1], [n for n in array.shape[2:] if n != 1]
    if len(rest) > 1:
        raise DatasetError(f"{path}: expected a 2D image with 1 or 3 channels, got shape {array.shape}")
    channels = rest[0] if rest else 1
    colour, alpha = split_alpha(array.reshape(height, width, channels), path)
    data = colour.astype(np.float32)
    if alpha is not None:
        background = alpha_full_scale(array.dtype) if data.shape[-1] == 3 else 0.0
        data = data * alpha[..., None] + background * (1 - alpha[..., None])
    if not np.isfinite(data).all():
        raise DatasetError(f"{path}: image has NaN or infinite pixels")
    return torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1)))


def read_spacing(path: str | Path) -> tuple[float, float]:
    """Pixel spacing (header zooms) along array axes 0 and 1."""
    path = Path(path)
    if _is_nifti(path):
        zooms = nib.load(str(path)).header.get_zooms()
        return float(zooms[0]), float(zooms[1]) if len(zooms) > 1 else 1.0
    image = _read(path)
    spacing = image.GetSpacing()
    return float(spacing[0]), float(spacing[1]) if len(spacing) > 1 else 1.0
