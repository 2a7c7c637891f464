#!/usr/bin/env python3
"""Container entry point: register the Learn2Reg task found under a (read-only) input folder.

    python entrypoint.py [--input /input] [--output /output] [--dataset PATH] [--split val|test]
                         [--device auto|cpu|cuda] [--seed N] [--shard I/N] [--force] [--qc]
                         [--threads N] [--jobs N] [--dask ADDRESS]

Finds the one ``*_dataset.json`` under ``--input`` (or takes ``--dataset``), registers ``registration_test`` when it
lists pairs (else ``registration_val``) and writes ``disp_*.nii.gz`` and ``results.csv`` to ``--output``. Nothing is
ever written under the input. Exit status: 0 when the descriptor was usable (failed pairs are recorded in
``results.csv`` with identity fields; a missing or corrupt image fails its pair only), 2 when the descriptor is
missing, ambiguous or unusable. ``--shard``, ``--force``, ``--qc``, ``--threads``, ``--jobs`` and ``--dask`` are
those of ``fide register`` (valid fields already in the output are kept unless ``--force``; the default thread
count is the container's CPU quota, not the host's core count).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fide.cli._common import configure_logging, seed_everything, select_device
from fide.cli.register import add_run_arguments, register_with_run_options
from fide.config import FideConfig
from fide.features.select import resolve_encoders
from fide.io import DatasetError, find_descriptor, load_dataset
from fide.resources import configure_threads

logger = logging.getLogger("fide.entrypoint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("/input"))
    parser.add_argument("--output", type=Path, default=Path("/output"))
    parser.add_argument("--dataset", type=Path, help="descriptor path (default: the one under --input)")
    parser.add_argument("--split", choices=["val", "test"], help="default: test when it lists pairs, else val")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        descriptor = args.dataset or find_descriptor(args.input, "choose one with --dataset")
        dataset = load_dataset(descriptor, check_files=False)  # a missing image fails its pair only
        split = args.split or dataset.default_split()
        pairs = dataset.split(split)
        if not pairs:
            raise DatasetError(f"{descriptor}: split {split!r} lists no pairs")
        input_root = args.input.resolve()
        if args.output.resolve() == input_root or input_root in args.output.resolve().parents:
            raise DatasetError(f"{args.output}: output must not lie under the input folder {input_root}")
        threads = configure_threads(args.threads)  # the container's CPU quota, not the host's core count
        seed_everything(args.seed)
        cfg = FideConfig(seed=args.seed)
        device = select_device(args.device)
        logger.info("%s: registering %d %s pairs on %s, %d threads", dataset.name, len(pairs), split, device, threads)
        table = register_with_run_options(pairs, args, cfg, device, resolve_encoders(cfg.encoder, device))
    except DatasetError as err:
        logger.error("%s", err)
        return 2
    failed = int((table["status"] == "failed").sum())
    logger.info("done: %d pairs, %d failed; fields in %s", len(table), failed, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
