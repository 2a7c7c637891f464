"""Carrying what a lab has across a registration: points, GeoJSON annotations, label and mask images, other images.

Directions. A registration's map goes from fixed full-resolution pixels to moving ones (``forward``: what
``SimpleITK.Resample(moving, fixed, T)`` needs, and :meth:`Aligned.warp_points`' default). What a user carries
goes the other way by default, the way ``moving_warped`` does: annotations drawn on the moving image (the bright
field, in QuPath) land on the fixed image (the SHG), and an image of the moving grid (another stain, a channel, a
label image) is resampled onto the fixed grid. ``inverse=True`` carries from the fixed image to the moving one.
Points are (x, y) = (column, row), pixels; see :mod:`fide.align.source` for the axis convention.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from fide import geometry
from fide.arrays import as_array, as_points
from fide.io import DatasetError

from .geojson import map_geojson
from .pyramid import MIN_SIDE_PX, TILE_PX, write_warped
from .resample import PixelMap, warp_array
from .source import ImageSource, open_source

__all__ = ["Aligned", "is_label_image"]

logger = logging.getLogger(__name__)

_MASK_SAMPLE_PX = 1 << 20  # pixels looked at to tell a two-valued mask from an image


def is_label_image(array: np.ndarray, labels: bool | None = None) -> bool:
    """Whether to resample an (X, Y, C) array as labels (nearest neighbour, values kept) rather than intensities.

    ``labels`` decides when given. Otherwise: booleans, signed integers and integers of 32 bits or more are labels;
    a single-channel uint8 / uint16 image is a mask when it holds at most two values (looked at on up to
    ``_MASK_SAMPLE_PX`` evenly strided pixels); anything else (grey or RGB intensities, floats) is an image.
    """
    if labels is not None:
        return bool(labels)
    dtype = array.dtype
    if dtype == np.bool_ or np.issubdtype(dtype, np.signedinteger):
        return True
    if not np.issubdtype(dtype, np.integer):
        return False
    if dtype.itemsize >= 4:
        return True
    if array.shape[2] != 1:
        return False
    step = max(1, int(np.sqrt(array.shape[0] * array.shape[1] / _MASK_SAMPLE_PX)))
    return len(np.unique(array[::step, ::step])) <= 2


class Aligned:
    """Points, GeoJSON and images carried across a registration (base of :class:`fide.align.Registration` and of
    what :func:`fide.load` gives back).

    Subclasses provide ``fixed`` and ``moving`` (:class:`~fide.align.source.ImageSource`: sizes, pixel sizes, the
    images when readable) and ``forward`` (:class:`~fide.align.resample.PixelMap`, fixed full-resolution pixels
    → moving ones).
    """

    fixed: ImageSource
    moving: ImageSource
    forward: PixelMap

    @property
    def backward(self) -> PixelMap:
        """Moving full-resolution pixels → fixed ones, for resampling onto the moving grid (solved once)."""
        if getattr(self, "_backward", None) is None:
            self._backward = self.forward.inverse(self.moving.shape)
        return self._backward

    def warp_points(self, points, *, inverse: bool = False) -> np.ndarray:
        """Map (N, 2) **fixed** (x, y) pixel points to the moving image; ``inverse=True`` maps moving points back.

        The registration's own direction (``transform.tfm``'s); :meth:`transform_points` is the reverse default.
        Any array-like: lists, tuples, numpy views of any strides, integer or float, torch tensors.

        Returns:
            (N, 2) float64 (x, y) pixels. The inverse of a deformable map is solved per point (to 1e-6 px of the
            field's grid).
        """
        tensor = torch.from_numpy(as_points(points))
        return (self.forward.invert(tensor) if inverse else self.forward(tensor)).numpy()

    def transform_points(self, points, *, inverse: bool = False) -> np.ndarray:
        """Carry (N, 2) (x, y) pixel points of the **moving** image onto the fixed image (``inverse``: fixed →
        moving), full-resolution pixels, pixel centres at integers.

        Examples::

            >>> aligned = fide.load("aligned/")                      # doctest: +SKIP
            >>> aligned.transform_points([[120.0, 80.0]])            # doctest: +SKIP
        """
        return self.warp_points(points, inverse=not inverse)

    def transform_geojson(self, geojson, *, inverse: bool = False):
        """Carry GeoJSON (QuPath's export; coordinates in full-resolution pixels of the moving image, origin at the
        top-left corner of the first pixel) onto the fixed image (``inverse``: fixed → moving).

        Args:
            geojson: a path to a ``.geojson`` / ``.json`` file, or the parsed object (dict or list of Features).

        Returns:
            The same structure with every coordinate carried, properties kept (see :mod:`fide.align.geojson`).

        Raises:
            ValueError: not GeoJSON, or malformed geometries (naming the file and the place in it).
        """
        where = "GeoJSON"
        if isinstance(geojson, (str, Path)):
            where = str(geojson)
            try:
                geojson = json.loads(Path(geojson).read_text())
            except (OSError, ValueError) as err:
                raise ValueError(f"{where}: cannot read GeoJSON ({str(err).splitlines()[0]})") from None

        def carry(xy: np.ndarray) -> np.ndarray:
            centres = geometry.corner_to_centre(torch.from_numpy(xy))
            moved = torch.from_numpy(self.transform_points(centres.numpy(), inverse=inverse))
            return geometry.centre_to_corner(moved).numpy()

        return map_geojson(geojson, carry, where)

    def _source_of(self, image, inverse: bool) -> tuple[ImageSource, bool]:
        """The image to resample (the moving image itself when None; fixed with ``inverse``) and whether it came
        as a boolean mask."""
        grid, role = (self.fixed, "fixed") if inverse else (self.moving, "moving")
        boolean = False
        if image is None:
            if grid.array is None and not Path(grid.info.path).is_file():
                raise DatasetError(f"{grid.name}: the {role} image is not there; pass the image to resample")
            source = grid
        elif isinstance(image, (str, Path)):
            source = open_source(image, None, "image")
        else:
            array = as_array(image, "image")
            boolean = array.dtype == np.bool_
            source = open_source(array.astype(np.uint8) if boolean else array, None, "image")
        if source.shape != grid.shape:
            raise ValueError(
                f"{source.name}: image must have the {role} grid's size {grid.shape[::-1]} (rows, columns), "
                f"got {source.shape[::-1]}"
            )
        return source, boolean

    def warp(self, image=None, *, inverse: bool = False, labels: bool | None = None) -> np.ndarray:
        """Resample an image of the moving grid onto the fixed grid (``inverse``: fixed grid → moving grid), full
        resolution, in memory.

        Args:
            image: a (rows, columns[, channels]) array-like (numpy of any strides, torch tensor, lists) or an image
                file of the source grid's size (another stain, a channel, a label or mask image); the moving
                image itself when None (the fixed one with ``inverse``).
            inverse: resample from the fixed grid onto the moving grid instead.
            labels: nearest neighbour, values and dtype kept (label and mask images); None decides from the pixels
                (:func:`is_label_image`); False: bilinear, rounded and clipped to the dtype.

        Returns:
            (rows, columns[, channels]) array of the target grid, the input's dtype (booleans stay booleans),
            0 outside the source.
        """
        source, boolean = self._source_of(image, inverse)
        array = source.read()
        as_labels = is_label_image(array, labels)
        mapping, target = (self.backward, self.moving) if inverse else (self.forward, self.fixed)
        warped = warp_array(array, mapping, target.shape, labels=as_labels)
        out = np.transpose(warped, (1, 0, 2))
        out = out.astype(bool) if boolean else out
        two_d = image is None or isinstance(image, (str, Path)) or np.ndim(as_array(image, "image")) == 2
        return out[:, :, 0] if out.shape[2] == 1 and two_d else out

    def write_image(
        self,
        image,
        path: str | Path,
        *,
        inverse: bool = False,
        labels: bool | None = None,
        compression: str = "zlib",
        tile: int = TILE_PX,
        min_side: int = MIN_SIDE_PX,
    ) -> Path:
        """Resample an image like :meth:`warp` and stream it into a tiled pyramidal OME-TIFF at ``path``.

        Peak memory: the source image plus one band per level. The target grid's pixel size, the image's name as
        the channel name, white for grey channels. ``compression``: "zlib", "jpeg" (uint8 only) or "none".
        """
        source, boolean = self._source_of(image, inverse)
        array = source.read()
        as_labels = is_label_image(array, labels)
        mapping, target = (self.backward, self.moving) if inverse else (self.forward, self.fixed)
        name = Path(source.name).name.split(".")[0].strip("<>")
        logger.info("%s: resampled as %s", source.name, "labels (nearest neighbour)" if as_labels else "an image")
        return write_warped(
            Path(path),
            array.astype(np.uint8) if boolean else array,
            mapping,
            target.shape,
            labels=as_labels,
            compression=compression,
            pixel_size_um=target.pixel_size_um,
            channel_name=name,
            tile=tile,
            min_side=min_side,
        )
