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


__all__ = ["register", "__version__"]
