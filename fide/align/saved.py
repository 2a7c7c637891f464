"""A registration back from its ``fide align`` folder: :func:`load` and :class:`SavedRegistration`.

The map is read from ``transform.tfm`` (through :func:`fide.align.export.pixel_map_of`, its one reader), in the two
ITK frames ``transform.json`` records, so what Python and ``fide transform`` do is what ITK does with the file. The
images are reopened from the paths ``transform.json`` records when they are still there with the same size; without
them, points and GeoJSON still map, and ``warp`` needs the image passed in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fide.geometry import PhysicalFrame
from fide.io import DatasetError
from fide.io.microscopy import ImageInfo

from .aligned import Aligned
from .export import pixel_map_of
from .resample import PixelMap
from .source import ImageSource, open_source

__all__ = ["SavedRegistration", "load"]

logger = logging.getLogger(__name__)


@dataclass
class SavedRegistration(Aligned):
    """A registration read back from a ``fide align`` output folder (see :class:`~fide.align.aligned.Aligned`).

    Attributes:
        folder: the folder.
        fixed, moving: the two images (sizes, pixel sizes, frames; their pixels when the files are still there).
        forward: fixed full-resolution pixels → moving ones, from ``transform.tfm``.
        description: the content of ``transform.json``.

    Examples::

        >>> import fide
        >>> aligned = fide.load("aligned/")                                  # doctest: +SKIP
        >>> aligned.transform_points([[300.0, 200.0]])   # bright field -> SHG  # doctest: +SKIP
    """

    folder: Path
    fixed: ImageSource
    moving: ImageSource
    forward: PixelMap
    description: dict
    _backward: PixelMap | None = dataclasses.field(default=None, repr=False)

    @property
    def affine(self) -> np.ndarray:
        """(3, 3) fixed → moving pixel affine (``transform.json``'s ``pixel.matrix``)."""
        return np.asarray(self.description["pixel"]["matrix"], dtype=np.float64)

    @property
    def deformable(self) -> bool:
        """Whether the map has a displacement-field part."""
        return self.forward.field is not None


def _frame(value: dict, where: str) -> PhysicalFrame:
    try:
        return PhysicalFrame(
            tuple(float(v) for v in value["origin"]),
            tuple(float(v) for v in value["spacing"]),
            tuple(float(v) for v in value["direction"]),
        )
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{where}: frame needs origin, spacing and direction lists") from None


def _source(description: dict, role: str, frame: PhysicalFrame, where: str) -> ImageSource:
    """The image of ``role`` reopened from its recorded path, or its metadata alone."""
    try:
        shape = tuple(int(n) for n in description["pixel"][f"{role}_size_xy"])
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{where}: pixel.{role}_size_xy missing or not two integers") from None
    size = (description.get("pixel_size_um") or {}).get(role)
    size = tuple(float(v) for v in size) if size else None
    name = (description.get("inputs") or {}).get(role, f"<{role}>")
    if Path(name).is_file():
        try:
            source = open_source(name, size, role)
            if source.shape == shape:
                return source
            logger.info("%s: now %s px, registered at %s px: not used", name, source.shape, shape)
        except DatasetError as err:
            logger.info("%s: cannot reopen (%s)", name, err)
    info = ImageInfo(Path(name), (shape,), 1, np.dtype(np.uint8), size, frame, ".ome.tif")  # type: ignore[arg-type]
    return ImageSource(info, name, size)


def load(folder: str | Path) -> SavedRegistration:
    """The registration a ``fide align`` (or ``Registration.save``) output folder holds.

    Raises:
        DatasetError: not such a folder (``transform.json`` or ``transform.tfm`` missing or unreadable), naming it.
    """
    folder = Path(folder)
    json_path, tfm_path = folder / "transform.json", folder / "transform.tfm"
    for path in (json_path, tfm_path):
        if not path.is_file():
            raise DatasetError(f"{folder}: not a fide align output folder ({path.name} missing)")
    try:
        description = json.loads(json_path.read_text())
        frames = description["physical"]["fixed_frame"], description["physical"]["moving_frame"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{json_path}: cannot read the transform description ({err})") from None
    fixed_frame, moving_frame = (_frame(f, str(json_path)) for f in frames)
    try:
        transform = sitk.ReadTransform(str(tfm_path))
        forward = pixel_map_of(transform, fixed_frame, moving_frame)
    except (RuntimeError, ValueError) as err:
        text = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        raise DatasetError(f"{tfm_path}: cannot read the transform ({text})") from None
    fixed = _source(description, "fixed", fixed_frame, str(json_path))
    moving = _source(description, "moving", moving_frame, str(json_path))
    return SavedRegistration(folder, fixed, moving, forward, description)
