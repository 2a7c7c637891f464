"""CPU against CUDA on the same pairs: do the fields agree, is CUDA repeatable, and what does each cost?

Usage (from the repository root, on a machine with a GPU)::

    python benchmarks/device_check.py --dataset benchmarks/.cache/synth-834px-20pairs-seed2025/SYNTHSHGBF_dataset.json \
        --cases 0003,0011,0015 --repeats 2

Prints one table, a row per pair: landmark TRE (mean over the pair's landmarks, through the whole field) on each
device, the largest difference between the CPU and the first CUDA field, the largest difference between repeated
CUDA runs (0 means bit-identical), and wall seconds per run (CUDA after a warm-up pair, synchronised).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from fide import geometry  # noqa: E402
from fide.cli._common import seed_everything  # noqa: E402
from fide.config import FideConfig  # noqa: E402
from fide.features.select import resolve_encoders  # noqa: E402
from fide.io import load_dataset, read_image, read_landmark_pair  # noqa: E402
from fide.pipeline import register_pair  # noqa: E402


def _timed(fixed: torch.Tensor, moving: torch.Tensor, device: torch.device, cfg: FideConfig, encoders):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = register_pair(fixed, moving, cfg, device=device, encoders=encoders)
    disp = result.disp.detach().cpu().double()  # the copy synchronises
    return disp, time.perf_counter() - start, result.notes


def _tre(disp: torch.Tensor, fixed_points: torch.Tensor, moving_points: torch.Tensor) -> float:
    return float((geometry.map_points(fixed_points, disp) - moving_points).norm(dim=1).mean())


def check(dataset: Path, cases: list[str] | None, repeats: int) -> pd.DataFrame:
    """One row per val pair of ``dataset`` (only ``cases`` when given); see the module docstring for the columns."""
    cuda = torch.device("cuda")
    cfg = FideConfig()
    seed_everything(cfg.seed)  # as `fide register` does: repeatable CUDA kernels
    pairs = [p for p in load_dataset(dataset).split("val") if cases is None or p.fixed_case in cases]
    if not pairs:
        raise SystemExit(f"device_check: no val pairs of {dataset} match {cases}")
    # what `fide register` uses: the shipped encoders, loaded once per device
    encoders = {device: resolve_encoders(cfg.encoder, device) for device in (torch.device("cpu"), cuda)}
    _timed(read_image(pairs[0].fixed), read_image(pairs[0].moving), cuda, cfg, encoders[cuda])  # warm-up
    rows = []
    for pair in pairs:
        fixed, moving = read_image(pair.fixed), read_image(pair.moving)
        points = [torch.tensor(p, dtype=torch.float64) for p in read_landmark_pair(*pair.landmarks())]
        cpu_disp, cpu_s, _ = _timed(fixed, moving, torch.device("cpu"), cfg, encoders[torch.device("cpu")])
        runs = [_timed(fixed, moving, cuda, cfg, encoders[cuda]) for _ in range(repeats)]
        cuda_disp = runs[0][0]
        rows.append(
            {
                "case": pair.fixed_case,
                "tre_cpu": _tre(cpu_disp, *points),
                "tre_cuda": _tre(cuda_disp, *points),
                "max_diff_cpu_cuda_px": float((cuda_disp - cpu_disp).abs().max()),
                "max_diff_cuda_repeats_px": max(float((d - cuda_disp).abs().max()) for d, _, _ in runs),
                "s_cpu": cpu_s,
                "s_cuda": min(s for _, s, _ in runs),
                "cuda_notes": "; ".join(runs[0][2]),
            }
        )
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="<TASK>_dataset.json with val landmarks")
    parser.add_argument("--cases", help="comma list of fixed case ids (default: every val pair)")
    parser.add_argument("--repeats", type=int, default=2, help="CUDA runs per pair (>= 2 checks repeatability)")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("device_check: needs a CUDA device")
    if args.repeats < 1:
        raise SystemExit(f"device_check: --repeats must be >= 1, got {args.repeats}")
    cases = [c.strip() for c in args.cases.split(",")] if args.cases else None
    table = check(args.dataset, cases, args.repeats)
    print()
    print(table.drop(columns="cuda_notes").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
