"""Where the pose criterion peaks around each pair's true pose: the label NMI's best shift, rotation and scale.

    .venv/bin/python benchmarks/criterion_peak.py decoupled --pairs 10 --seed 61 [--fields DIR] [--size 834]

The decision and the precision steps keep the pose of highest label NMI (:mod:`fide.pair`, :mod:`fide.precision`).
A criterion whose optimum lies off the truth bounds every optimiser of it; one whose optimum is at the truth leaves
a miss to the optimiser. Per pair (the development tasks' numbering: val pair k is case k + 1, as ``dev_tasks.py``
generates it from the regime and seed) this prints the label NMI's optimum around the truth's affine (the field's
least-squares affine): its best shift, then its best rotation about the fixed image's centre and its best scale,
each swept with the translation free (the shift maps of :func:`fide.precision.shift_nmis` at
``OptimiseConfig.fine_size_px``, peaks refined by a parabola). With ``--fields`` (a ``dev_tasks.py --out`` task
folder of ``disp_XXXX_XXXX.nii.gz``) also where fide's pose sits: its affine's rotation and scale relative to the
truth's, and its landmark TRE.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fide
from fide import geometry  # noqa: E402
from fide.config import REFERENCE_SIDE_PX, FideConfig  # noqa: E402
from fide.features.cooccurrence import peak_position, sampled_peak  # noqa: E402
from fide.io import read_disp  # noqa: E402
from fide.pair import PairInputs, prepare_inputs  # noqa: E402
from fide.precision import shift_nmis  # noqa: E402
from fide.synth.task import make_pair  # noqa: E402

ANGLE_STEP_DEG, SCALE_STEP, STEPS = 0.1, 0.0025, 6  # sweeps of ±0.6° and ±1.5 %: a miss's size (2-4 px at 834)
SHIFT_REACH_PX = 8  # pixels at 834 px around the truth


def criterion_peak(inputs: PairInputs, affine: torch.Tensor, size_px: int) -> dict[str, float]:
    """The label NMI's optimum near the (3, 3) full-resolution ``affine`` at working size ``size_px``.

    Returns:
        ``shift_px`` (length of the best shift, full-resolution pixels), ``angle_deg`` and ``scale`` (the best
        rotation / scale applied after ``affine``, about the fixed image's centre, the translation free).
    """
    working = inputs.working(size_px)
    reach = max(2, math.ceil(SHIFT_REACH_PX * max(working.shape) / REFERENCE_SIDE_PX))
    base = working.down(affine.to(working.fixed_labels))
    centre = base.new_tensor([(n - 1) / 2 for n in working.shape])

    def nmi_map(angle_deg: float, scale: float) -> torch.Tensor:
        local = geometry.similarity_matrix(
            torch.deg2rad(base.new_tensor([angle_deg])), base.new_tensor([scale]), centre, centre
        )[0]
        return shift_nmis(working, base @ local, reach, inputs.num_labels)

    factor = max(inputs.fixed.shape) / max(working.shape)
    shift = float((peak_position(nmi_map(0.0, 1.0)) - reach).norm()) * factor
    steps = np.arange(-STEPS, STEPS + 1)
    angles = steps * ANGLE_STEP_DEG
    angle = sampled_peak([float(nmi_map(float(a), 1.0).max()) for a in angles], angles)
    log_scales = steps * math.log1p(SCALE_STEP)
    scale = math.exp(sampled_peak([float(nmi_map(angle, math.exp(s)).max()) for s in log_scales], log_scales))
    return {"shift_px": shift, "angle_deg": angle, "scale": scale}


def relative_pose(truth: torch.Tensor, affine: torch.Tensor) -> tuple[float, float]:
    """Rotation (degrees) and isotropic scale of ``truth^-1 @ affine`` (fixed to fixed): how far a pose is turned
    and scaled from the truth's."""
    linear = (torch.linalg.inv(truth.double()) @ affine.double())[:2, :2]
    angle = math.degrees(math.atan2(float(linear[1, 0] - linear[0, 1]), float(linear[0, 0] + linear[1, 1])))
    return angle, math.sqrt(abs(float(torch.linalg.det(linear))))


def landmark_tre(affine: torch.Tensor, fixed_points: np.ndarray, moving_points: np.ndarray) -> float:
    """Mean distance of the affine's image of the fixed landmarks (N, 2) from the moving ones, pixels."""
    mapped = np.c_[fixed_points, np.ones(len(fixed_points))] @ affine.double().numpy().T
    return float(np.linalg.norm(mapped[:, :2] - moving_points, axis=1).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("regime")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--size", type=int, default=834)
    parser.add_argument("--fields", type=Path, help="fide's fields of these pairs (a dev_tasks.py task folder)")
    args = parser.parse_args(argv)
    cfg = FideConfig()
    found = []
    for index in range(args.pairs):
        pair = make_pair("val", index, args.size, args.seed, regime=args.regime)
        fixed, moving = (torch.from_numpy(pair[k]).float() for k in ("fixed", "moving"))
        inputs, _ = prepare_inputs(fixed, moving, cfg, None, None)
        truth = geometry.fit_affine(torch.from_numpy(pair["disp"]).float()[None])[0]
        peak = criterion_peak(inputs, truth, cfg.optimise.fine_size_px)
        found.append(peak)
        line = (
            f"case {index + 1:04d}: criterion's optimum {peak['shift_px']:.2f} px, {peak['angle_deg']:+.2f}°, "
            f"scale {100 * (peak['scale'] - 1):+.2f} % from the truth"
        )
        if args.fields:
            case = f"{index + 1:04d}"
            ours = geometry.fit_affine(read_disp(args.fields / f"disp_{case}_{case}.nii.gz")[None])[0]
            angle, scale = relative_pose(truth, ours)
            tre = landmark_tre(ours, pair["fixed_points"], pair["moving_points"])
            line += f"; fide's pose {angle:+.2f}°, scale {100 * (scale - 1):+.2f} %, TRE {tre:.2f} px"
        print(line, flush=True)
    for key, unit, origin, factor in (
        ("shift_px", "px", 0.0, 1.0),
        ("angle_deg", "°", 0.0, 1.0),
        ("scale", "%", 1.0, 100.0),
    ):
        values = factor * (np.array([p[key] for p in found]) - origin)  # scale as % off 1
        print(f"{key}: mean {values.mean():+.3f} {unit}, range {values.min():+.3f} .. {values.max():+.3f} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
