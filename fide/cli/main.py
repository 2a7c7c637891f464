"""The ``fide`` command: parses arguments, sets up logging and the device, and hands over to one command module.

Each sub-command lives in its own module of this package exposing ``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fide.cli._common import configure_logging
from fide.io import DatasetError
from fide.resources import configure_threads

__all__ = ["main", "build_parser", "COMMANDS"]

# sub-command name -> module under fide.cli
COMMANDS = {
    "register": "register",
    "evaluate": "evaluate",
    "synth": "synth",
    "demo": "demo",
    "train": "train",
    "ablate": "ablate",
    "warp-points": "warp_points",
    "align": "align",
    "transform": "transform",
    "example-pair": "example_pair",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fide", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(f"fide.cli.{module_name}")
        except ModuleNotFoundError as err:
            if err.name != f"fide.cli.{module_name}":
                raise
            continue  # command not built yet in this checkout
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    # cores this process may use (affinity, cgroup quota); fide train's --threads 0 also means the default
    configure_threads(getattr(args, "threads", None) or None)
    try:
        return int(args.run(args) or 0)
    except DatasetError as err:
        logging.getLogger("fide").error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
