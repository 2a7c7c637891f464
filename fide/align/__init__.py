"""``fide align`` and :func:`fide.register`: register two image files or arrays of any size and pixel size.

:mod:`~fide.align.source` opens inputs (the axis convention), :mod:`~fide.align.registration` registers them and
maps points, :mod:`~fide.align.refine` refines the result up to full-resolution pixels (coarse to fine, fitting the
patch matches of :mod:`~fide.align.match`), :mod:`~fide.align.resample` resamples images through the
full-resolution map, :mod:`~fide.align.export` writes the transform, the warped images and the QC picture,
:mod:`~fide.align.batch` runs a ``pairs.csv``; :mod:`~fide.align.aligned` carries points, GeoJSON and images across
a registration, :mod:`~fide.align.saved` reads one back from its folder (:func:`fide.load`),
:mod:`~fide.align.pyramid` writes pyramidal OME-TIFFs.
"""

from .aligned import Aligned
from .registration import WORKING_PX, Registration, register, register_sources
from .resample import PixelMap
from .saved import SavedRegistration, load
from .source import ImageSource, open_source

__all__ = [
    "Aligned",
    "Registration",
    "SavedRegistration",
    "PixelMap",
    "ImageSource",
    "register",
    "register_sources",
    "load",
    "open_source",
    "WORKING_PX",
]
