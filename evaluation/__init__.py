"""Standalone Learn2Reg evaluator for 2D and 3D displacement fields (imports nothing from fide).

Run as ``python evaluation/evaluation.py -i DISP_DIR -d GT_ROOT -o OUT.json -c CONFIG.json [-v]``, or import::

    from evaluation import evaluate, make_config
    result = evaluate(disp_dir, gt_root, make_config(gt_root / "TASK_dataset.json"))
"""

from .evaluation import EVAL_VERSION, cases_table, evaluate, format_table, load_config, main, make_config, write_outputs
from .inputs import case_key, find_disp_file, landmark_paths, load_disp, load_landmarks, normalise_disp, pair_ids
from .metrics import (
    aggregate,
    compute_tre,
    jacobian_determinant,
    jacobian_determinant_2d,
    jacobian_determinant_3d,
    num_foldings,
    num_foldings_l2r,
    sdlogj,
    sdlogj_l2r,
    worst30_quantile,
)

__all__ = [
    "EVAL_VERSION",
    "aggregate",
    "case_key",
    "cases_table",
    "compute_tre",
    "evaluate",
    "find_disp_file",
    "format_table",
    "jacobian_determinant",
    "jacobian_determinant_2d",
    "jacobian_determinant_3d",
    "landmark_paths",
    "load_config",
    "load_disp",
    "load_landmarks",
    "main",
    "make_config",
    "normalise_disp",
    "num_foldings",
    "num_foldings_l2r",
    "pair_ids",
    "sdlogj",
    "sdlogj_l2r",
    "worst30_quantile",
    "write_outputs",
]
