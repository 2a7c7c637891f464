"""``fide transform``'s files: CSV points, GeoJSON and images read, carried across a registration, written.

The kind follows the input's extension (``.csv``; ``.geojson`` / ``.json``; ``.tif`` / ``.tiff`` / ``.png`` and
the other image formats fide reads) unless given. Every error names the file and what is wrong in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fide.io import DatasetError, atomic_path
from fide.io.microscopy import write_warped_sitk

from .aligned import Aligned

__all__ = [
    "KINDS",
    "naming",
    "kind_of",
    "transform_csv",
    "transform_geojson_file",
    "transform_image_file",
    "transform_file",
]

KINDS = ("points", "geojson", "image")
_SUFFIX_KIND = {".csv": "points", ".geojson": "geojson", ".json": "geojson"}
_IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".mha", ".nrrd")
_WRITTEN_IMAGES = (".tif", ".tiff", ".png")


def kind_of(path: Path, kind: str | None = None) -> str:
    """The kind of an input file: ``kind`` when given (one of :data:`KINDS`), else from its extension."""
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        return kind
    name = path.name.lower()
    if path.suffix.lower() in _SUFFIX_KIND:
        return _SUFFIX_KIND[path.suffix.lower()]
    if name.endswith(_IMAGE_SUFFIXES):
        return "image"
    raise DatasetError(
        f"{path}: cannot tell the kind from the extension (.csv, .geojson/.json, .tif/.png); give --kind"
    )


def _write_atomic(path: Path, write) -> Path:
    tmp = atomic_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _point_columns(table: pd.DataFrame, columns: tuple[str, str] | None, path: Path) -> tuple[str, str]:
    if columns is None:
        lower = {str(c).strip().lower(): c for c in table.columns}
        if "x" not in lower or "y" not in lower:
            raise DatasetError(f"{path}: no x, y columns (columns: {list(table.columns)}); name them with --columns")
        return lower["x"], lower["y"]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetError(f"{path}: columns {missing} not found (columns: {list(table.columns)})")
    return columns


def transform_csv(
    aligned: Aligned, path: Path, output: Path, *, inverse: bool = False, columns: tuple[str, str] | None = None
) -> int:
    """Carry the points of a CSV (x, y pixel columns, or ``columns``) and write it with every other column kept.

    Rows whose x or y is empty stay empty. Returns the number of points carried.
    """
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DatasetError(f"{path}: cannot read CSV ({str(err).splitlines()[0]})") from None
    x, y = _point_columns(table, columns, path)
    try:
        xy = table[[x, y]].apply(pd.to_numeric, errors="raise").to_numpy(np.float64)
    except (ValueError, TypeError):
        raise DatasetError(f"{path}: columns {x}, {y} must hold numbers (pixels)") from None
    present = np.isfinite(xy).all(1)
    mapped = xy.copy()
    mapped[present] = aligned.transform_points(xy[present], inverse=inverse)
    table[x], table[y] = mapped[:, 0], mapped[:, 1]
    _write_atomic(output, lambda tmp: table.to_csv(tmp, index=False, float_format="%.4f"))
    return int(present.sum())


def transform_geojson_file(aligned: Aligned, path: Path, output: Path, *, inverse: bool = False) -> int:
    """Carry a GeoJSON file's geometries and write it. Returns the number of features (or geometries)."""
    try:
        carried = aligned.transform_geojson(path, inverse=inverse)
    except ValueError as err:
        raise DatasetError(str(err)) from None
    _write_atomic(output, lambda tmp: tmp.write_text(json.dumps(carried)))
    if isinstance(carried, dict) and carried.get("type") == "FeatureCollection":
        return len(carried.get("features", []))
    return len(carried) if isinstance(carried, list) else 1


def transform_image_file(
    aligned: Aligned,
    path: Path,
    output: Path,
    *,
    inverse: bool = False,
    labels: bool | None = None,
    compression: str = "zlib",
) -> Path:
    """Resample an image file onto the other grid: a pyramidal OME-TIFF (``.tif``/``.tiff``) or a PNG."""
    name = output.name.lower()
    if not name.endswith(_WRITTEN_IMAGES):
        raise DatasetError(f"{output}: images are written as .ome.tif / .tif (pyramidal OME-TIFF) or .png")
    try:
        if name.endswith(".png"):
            warped = aligned.warp(path, inverse=inverse, labels=labels)
            if warped.dtype not in (np.uint8, np.uint16):
                raise DatasetError(f"{output}: PNG holds uint8 or uint16 pixels, not {warped.dtype}; write a .tif")
            array = warped if warped.ndim == 3 else warped[:, :, None]
            return write_warped_sitk(output, np.transpose(array, (1, 0, 2)), None)
        return aligned.write_image(path, output, inverse=inverse, labels=labels, compression=compression)
    except ValueError as err:
        raise DatasetError(naming(path, err)) from None


def naming(path: Path, err: Exception) -> str:
    """An error's message, led by the file's name unless it names it already."""
    return str(err) if str(path) in str(err) else f"{path}: {err}"


def transform_file(
    aligned: Aligned,
    path: str | Path,
    output: str | Path,
    *,
    kind: str | None = None,
    inverse: bool = False,
    columns: tuple[str, str] | None = None,
    labels: bool | None = None,
    compression: str = "zlib",
) -> str:
    """Carry one file of any kind across ``aligned``; returns a one-line summary."""
    path, output = Path(path), Path(output)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    kind = kind_of(path, kind)
    direction = "fixed → moving" if inverse else "moving → fixed"
    if kind == "points":
        return f"{transform_csv(aligned, path, output, inverse=inverse, columns=columns)} points {direction}"
    if kind == "geojson":
        return f"{transform_geojson_file(aligned, path, output, inverse=inverse)} features {direction}"
    written = transform_image_file(aligned, path, output, inverse=inverse, labels=labels, compression=compression)
    return f"image {direction}: {written}"
