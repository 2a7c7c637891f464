"""fide: fidelity-imposed displacement editing for SHG / bright-field microscopy registration (Learn2Reg format).

Pipeline (one sub-package per stage): ``io`` → ``preprocess`` → ``features`` → ``prealign`` → ``optimise`` →
``pipeline`` (composes them) → ``io`` (fields). ``geometry`` owns every coordinate convention.
"""

__version__ = "0.1.0"


def register(fixed, moving, cfg=None, **options):
    """Register ``moving`` to ``fixed`` (paths or numpy arrays): see :func:`fide.align.register`.

    Imported lazily, so ``import fide`` stays light (no torch until the first registration).
    """
    from fide.align import register as _register

    return _register(fixed, moving, cfg, **options)


def load(folder):
    """The registration a ``fide align`` output folder holds, to carry points, GeoJSON and images across: see
    :func:`fide.align.load`. Imported lazily, like :func:`register`."""
    from fide.align import load as _load

    return _load(folder)


__all__ = ["register", "load", "__version__"]
