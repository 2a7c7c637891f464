"""What ``fide align`` writes: the ITK transform, its JSON description, the Learn2Reg field, warped images, QC.

* ``transform.tfm``: ``SimpleITK.ReadTransform`` loads it; it maps a fixed physical point to the moving physical
  point in the frames ``SimpleITK.ReadImage`` gives the two files, so ``sitk.Resample(moving, fixed, T)``
  overlays them. An ``AffineTransform``, or with a deformable residual a ``CompositeTransform`` ``[affine,
  displacement field]`` (ITK applies the field first: ``T(x) = A(x + d(x))``), the field on a grid of at most
  ``_TFM_FIELD_PX`` points per side over the fixed image (ITK interpolates it linearly).
* ``transform.json``: the affine in full-resolution pixels, (x, y) = (column, row), and in physical units, with
  both frames (origin, spacing, direction) written out.
* ``disp.nii.gz``: the Learn2Reg field, (X, Y, 1, 2), pixels, fixed to moving; fixed images above
  ``_DISP_MAX_PX`` pixels get none (4 GB for 20 000²; the .tfm carries the same map).
* ``moving_warped.<ext>`` / ``fixed_warped.<ext>``: resampled bilinearly at full resolution in bands of rows; a
  TIFF family input gives a tiled pyramidal OME-TIFF (:mod:`fide.align.pyramid`: 512 px tiles, levels down to
  1024 px, zlib or JPEG, pixel size, channel name and colour), written tile by tile (peak memory: the source image
  plus one band per level).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
import torch

import fide
from fide import geometry
from fide.geometry import PhysicalFrame
from fide.io import atomic_path, write_disp
from fide.io.microscopy import compression_option, write_warped_sitk

from .pyramid import TILE_PX, write_warped
from .resample import PixelMap, cast_pixels, iter_warped_bands, warp_array, without_alpha
from .source import ImageSource

if TYPE_CHECKING:  # annotations only: Registration.save calls this module, so it never imports it back
    from .registration import Registration

__all__ = [
    "save",
    "warp_array",
    "iter_warped_bands",
    "physical_transform",
    "pixel_map_of",
    "transform_description",
    "channel_name",
    "OUTPUT_NAMES",
]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("transform.tfm", "transform.json", "qc.png")  # plus disp.nii.gz and the warped images
_TILE_PX = TILE_PX  # tile side of the pyramidal OME-TIFFs, and rows per band of the streamed resampling
_DISP_MAX_PX = 4096 * 4096  # largest fixed image that gets a dense disp.nii.gz (128 MiB)
_TFM_FIELD_PX = 256


def channel_name(source: ImageSource) -> str:
    """The OME channel name of an image from ``source``: its file name without extension."""
    return Path(source.name).name.split(".")[0].strip("<>")


def _write_warped(
    path: Path, source: ImageSource, mapping: PixelMap, target: ImageSource, label: str, compression: str, notes
) -> Path:
    """Resample ``source`` onto ``target``'s full-resolution grid and write it in ``source``'s format family."""
    colour = without_alpha(source.read(0))
    if source.info.family == ".ome.tif":
        if compression == "jpeg" and colour.dtype != np.uint8:
            notes.append(f"{path.name}: {colour.dtype} pixels, written with zlib (JPEG takes 8-bit pixels only)")
            compression = "zlib"
        return write_warped(
            path,
            colour,
            mapping,
            target.shape,
            compression=compression,
            pixel_size_um=target.pixel_size_um,
            channel_name=channel_name(source),
            tile=_TILE_PX,
            progress=label,
        )
    warped = np.transpose(np.concatenate(list(iter_warped_bands(colour, mapping, target.shape)), 0), (1, 0, 2))
    frame = target.info.frame
    if source.info.family == ".png" or source.info.family == ".jpg":
        warped = cast_pixels(warped, np.uint8) if warped.dtype not in (np.uint8, np.uint16) else warped
        frame = None
    return write_warped_sitk(path, warped, frame)


def _frames(reg: Registration) -> tuple[PhysicalFrame, PhysicalFrame, list[str]]:
    """Both ITK frames in one dimension (a 2D file against a 3D one: the 3D frame's first two axes)."""
    fixed, moving = reg.fixed.frame, reg.moving.frame
    if fixed.dimension == moving.dimension:
        return fixed, moving, []

    def plane(frame: PhysicalFrame) -> PhysicalFrame:
        d = frame.dimension
        direction = np.asarray(frame.direction).reshape(d, d)[:2, :2]
        return PhysicalFrame(frame.origin[:2], frame.spacing[:2], tuple(direction.flatten().tolist()))

    note = f"fixed file is {fixed.dimension}D, moving {moving.dimension}D: transform.tfm is 2D (first two axes)"
    return plane(fixed), plane(moving), [note]


def physical_transform(reg: Registration) -> tuple[sitk.Transform, np.ndarray, list[str]]:
    """The ITK transform (fixed physical → moving physical), its affine part (d+1, d+1) and notes."""
    fixed, moving, notes = _frames(reg)
    dim = fixed.dimension
    matrix = geometry.pixel_to_physical_affine(torch.from_numpy(reg.affine), fixed, moving)
    affine = sitk.AffineTransform(dim)
    affine.SetMatrix(matrix[:dim, :dim].flatten().tolist())
    affine.SetTranslation(matrix[:dim, dim].tolist())
    if not reg.deformable:
        return affine, matrix.numpy(), notes
    if dim != 2:
        notes.append("deformable residual not in transform.tfm (3D frame): the affine part only")
        return affine, matrix.numpy(), notes
    shape = tuple(min(n, _TFM_FIELD_PX) for n in reg.fixed.shape)
    grid = geometry.identity_grid(shape, like=torch.zeros((), dtype=torch.float64)).reshape(2, -1).T
    steps = torch.tensor([(n - 1) / max(g - 1, 1) for n, g in zip(reg.fixed.shape, shape)], dtype=torch.float64)
    pixels = grid * steps  # fixed full-resolution pixels of the field's grid points
    to_fixed, to_moving = geometry.index_to_physical(fixed), geometry.index_to_physical(moving)
    physical = geometry.apply_affine_to_points(to_fixed, pixels)
    target = geometry.apply_affine_to_points(to_moving, reg.forward(pixels))
    before_affine = geometry.apply_affine_to_points(torch.linalg.inv(matrix), target)  # A^-1 T(x) = x + d(x)
    values = (before_affine - physical).T.reshape(2, *shape)  # (2, X, Y)
    image = sitk.GetImageFromArray(values.permute(2, 1, 0).numpy(), isVector=True)  # (Y, X, 2) for SimpleITK
    image.SetOrigin(fixed.origin)
    image.SetSpacing(tuple(float(s * k) for s, k in zip(fixed.spacing, steps)))
    image.SetDirection(fixed.direction)
    composite = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(image)])
    return composite, matrix.numpy(), notes


def _input_name(source: ImageSource) -> str:
    """The absolute path of a file input (``fide.load`` reopens it), or the array's placeholder name."""
    return str(Path(source.name).resolve()) if source.array is None else source.name


def pixel_map_of(transform: sitk.Transform, fixed: PhysicalFrame, moving: PhysicalFrame) -> PixelMap:
    """The full-resolution pixel map, fixed (x, y) → moving (x, y), of a transform in ITK physical space.

    The one reader of ``transform.tfm`` (:func:`physical_transform` is its writer): an affine (any ITK
    matrix-offset transform), or a ``CompositeTransform`` ``[affine, displacement field]`` (ITK applies the last
    first: ``T(x) = A(x + d(x))``). Between the field's samples the map is bilinear, like ITK's linear interpolator;
    beyond them it takes the border displacement (ITK: zero; the written field covers the whole fixed image).

    Args:
        transform: what ``SimpleITK.ReadTransform`` gives for a ``transform.tfm``.
        fixed, moving: the two images' ITK frames (``transform.json``'s ``physical`` frames), one dimension d.

    Raises:
        ValueError: a transform of another kind or order (named).
    """
    parts = [transform.Downcast()]
    if isinstance(parts[0], sitk.CompositeTransform):
        parts = [parts[0].GetNthTransform(k).Downcast() for k in range(parts[0].GetNumberOfTransforms())]
    kinds = [part.GetName() for part in parts]
    dim = fixed.dimension
    if not hasattr(parts[0], "GetMatrix") or len(parts) > 2:
        raise ValueError(f"transform must be an affine or [affine, displacement field], got {kinds}")
    if len(parts) == 2 and not isinstance(parts[1], sitk.DisplacementFieldTransform):
        raise ValueError(f"transform must be an affine or [affine, displacement field], got {kinds}")
    linear = torch.tensor(parts[0].GetMatrix(), dtype=torch.float64).view(dim, dim)
    centre = torch.tensor(parts[0].GetCenter(), dtype=torch.float64)
    physical = torch.eye(dim + 1, dtype=torch.float64)  # T(x) = M (x - c) + c + t
    physical[:dim, :dim] = linear
    physical[:dim, dim] = torch.tensor(parts[0].GetTranslation(), dtype=torch.float64) + centre - linear @ centre
    if len(parts) == 1:
        return PixelMap(geometry.physical_to_pixel_affine(physical, fixed, moving))
    if dim != 2:
        raise ValueError(f"a displacement field is read in 2D frames only, got {dim}D")
    image = parts[1].GetDisplacementField()
    to_grid = geometry.index_to_physical(PhysicalFrame.of_image(image))  # field index -> physical
    values = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float64)).permute(2, 1, 0)  # (2, X, Y)
    field = (torch.linalg.inv(to_grid[:2, :2]) @ values.reshape(2, -1)).reshape(1, *values.shape)  # index units
    pre = torch.linalg.inv(to_grid) @ geometry.index_to_physical(fixed)
    post = torch.linalg.inv(geometry.index_to_physical(moving)) @ physical @ to_grid
    return PixelMap(pre, field, post)


def _frame_dict(frame: PhysicalFrame) -> dict:
    return {"origin": list(frame.origin), "spacing": list(frame.spacing), "direction": list(frame.direction)}


def transform_description(reg: Registration, physical: np.ndarray, notes: list[str]) -> dict:
    """The content of ``transform.json``."""
    fixed, moving, _ = _frames(reg)
    return {
        "fide_version": fide.__version__,
        "direction": "fixed to moving: [x_m, y_m, 1] = matrix @ [x_f, y_f, 1]",
        "pixel": {
            "axes": "x = column, y = row; pixel centres at integers; full resolution",
            "matrix": reg.affine.tolist(),
            "fixed_size_xy": list(reg.fixed.shape),
            "moving_size_xy": list(reg.moving.shape),
        },
        "physical": {
            "axes": "ITK physical space of each file as SimpleITK.ReadImage gives it (LPS, its units)",
            "matrix": physical.tolist(),
            "fixed_frame": _frame_dict(fixed),
            "moving_frame": _frame_dict(moving),
        },
        "pixel_size_um": {"fixed": reg.fixed.pixel_size_um, "moving": reg.moving.pixel_size_um},
        "inputs": {"fixed": _input_name(reg.fixed), "moving": _input_name(reg.moving)},
        "deformable": reg.deformable,
        "refinement": getattr(reg, "refinement", None),
        "quality": reg.quality,
        "confidence": reg.confidence,
        "mirrored": reg.mirrored,
        "flagged": reg.flagged,
        "notes": reg.notes + notes,
    }


def _write_text(path: Path, text: str) -> None:
    tmp = atomic_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_transform(path: Path, transform: sitk.Transform) -> None:
    tmp = atomic_path(path)
    try:
        sitk.WriteTransform(transform, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_disp(path: Path, reg: Registration) -> Path | None:
    width, height = reg.fixed.shape
    if width * height > _DISP_MAX_PX:
        reg.notes.append(
            f"no disp.nii.gz: the fixed image has {width * height / 1e6:.0f} Mpx (transform.tfm has the map)"
        )
        return None
    grid = geometry.identity_grid((width, height), like=torch.zeros((), dtype=torch.float64)).reshape(2, -1).T
    disp = (reg.forward(grid) - grid).T.reshape(2, width, height)
    return write_disp(path, disp.float())


def save(
    reg: Registration, folder: Path, *, inverse: bool = False, qc: bool = True, compression: str = "zlib"
) -> dict[str, Path]:
    """Write every output of one registration into ``folder`` (created); each file atomically.

    ``compression`` ("zlib", "jpeg" or "none") applies to the warped OME-TIFFs; JPEG to 8-bit ones only (others
    get zlib, with a note in ``transform.json``).

    Returns:
        Output name → path (``disp`` missing above ``_DISP_MAX_PX``).
    """
    compression_option(compression)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    disp = _write_disp(folder / "disp.nii.gz", reg)
    if disp is not None:
        written["disp"] = disp
    transform, physical, notes = physical_transform(reg)
    written["moving_warped"] = _write_warped(
        folder / f"moving_warped{reg.moving.info.family}",
        reg.moving,
        reg.forward,
        reg.fixed,
        "moving_warped",
        compression,
        notes,
    )
    if inverse:
        written["fixed_warped"] = _write_warped(
            folder / f"fixed_warped{reg.fixed.info.family}",
            reg.fixed,
            reg.backward,
            reg.moving,
            "fixed_warped",
            compression,
            notes,
        )
    if qc:
        from fide.qc import qc_figure  # matplotlib only when asked for

        title = f"{Path(reg.fixed.name).name} ← {Path(reg.moving.name).name}: {reg.summary()}"
        # drawn as (row, column) pictures, the way the files look in a viewer
        fixed_rc, moving_rc = reg.working_fixed.pixels.transpose(1, 2), reg.working_moving.pixels.transpose(1, 2)
        disp_rc = geometry.transpose_disp(reg.working_disp)
        written["qc"] = qc_figure(fixed_rc, moving_rc, disp_rc, folder / "qc.png", title=title, failed=reg.flagged)
    written["tfm"] = folder / "transform.tfm"
    _write_transform(written["tfm"], transform)
    written["json"] = folder / "transform.json"  # last: its presence marks a complete folder (resume)
    _write_text(written["json"], json.dumps(transform_description(reg, physical, notes), indent=2) + "\n")
    return written
