"""``fide align`` and :func:`fide.register`: register two image files or arrays of any size and pixel size.

:mod:`~fide.align.source` opens inputs (the axis convention), :mod:`~fide.align.registration` registers them and
maps points, :mod:`~fide.align.resample` resamples images through the full-resolution map,
:mod:`~fide.align.export` writes the transform, the warped images and the QC picture, :mod:`~fide.align.batch` runs
a ``pairs.csv``.
"""

from .registration import WORKING_PX, Registration, register, register_sources
from .resample import PixelMap
from .source import ImageSource, open_source

__all__ = ["Registration", "PixelMap", "ImageSource", "register", "register_sources", "open_source", "WORKING_PX"]
