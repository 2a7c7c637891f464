"""fide: fidelity-imposed displacement editing for SHG / bright-field microscopy registration (Learn2Reg format).

Pipeline (one sub-package per stage): ``io`` → ``preprocess`` → ``features`` → ``prealign`` → ``optimise`` →
``pipeline`` (composes them) → ``io`` (fields). ``geometry`` owns every coordinate convention.
"""

__version__ = "0.1.0"
