"""fide's one log format, set up the same way by every command line and by the worker processes.

A library module (not part of the command line) because the worker processes of ``fide register --jobs`` configure
their logging as the parent command did, and library code never imports :mod:`fide.cli`.
"""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(verbose: bool = False) -> None:
    """One log format for every fide command line (``fide``, the entry point, the benchmark)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
