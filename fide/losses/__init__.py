"""Training losses of fide's learned components (the registration losses live in fide/optimise)."""

from .bnce import CRITICS, REDUCTIONS, BatchNCELoss, apply_reduction, extract_patches, sample_patch_corners

__all__ = ["BatchNCELoss", "CRITICS", "REDUCTIONS", "apply_reduction", "extract_patches", "sample_patch_corners"]
