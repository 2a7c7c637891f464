"""The results table of a run (``results.csv``): its columns, the rows of shards and earlier runs, atomic writes.

One row per pair: ``pair, status, seconds, quality, confidence, mirrored, message`` (docs/operations.md). Tables
written before the confidence columns existed are still read (resume, merge).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fide.io import atomic_path

__all__ = [
    "PairOutcome",
    "COLUMNS",
    "RESULTS_NAME",
    "STATUSES",
    "results_name",
    "read_tables",
    "merge_results",
    "write_table",
]

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.csv"
# "ok"; "flagged": written but likely a wrong pose (low confidence); "failed": identity field; "skipped": valid
# field kept
STATUSES = ("ok", "flagged", "failed", "skipped")
COLUMNS = ["pair", "status", "seconds", "quality", "confidence", "mirrored", "message"]
# tables written before the confidence columns existed are still read (resume, merge): these get defaults
_DEFAULTS = {"confidence": float("nan"), "mirrored": False}


@dataclass
class PairOutcome:
    """One row of ``results.csv``."""

    pair: str
    status: str  # one of STATUSES
    seconds: float
    quality: float
    confidence: float = float("nan")  # see fide/decision.py
    mirrored: bool = False  # the affine reflects: the slide was mirrored
    message: str = ""


def results_name(shard: tuple[int, int] | None = None) -> str:
    """``results.csv``, or ``results.shard-I-of-N.csv`` for a shard."""
    return RESULTS_NAME if shard is None else f"results.shard-{shard[0]}-of-{shard[1]}.csv"


def read_tables(output: Path) -> pd.DataFrame:
    """Rows of every ``results*.csv`` in ``output``, oldest file first (empty when none)."""
    files = sorted(output.glob("results*.csv"), key=lambda p: (p.stat().st_mtime, p.name))
    tables = []
    for file in files:
        try:
            table = pd.read_csv(file, dtype={"pair": str, "status": str, "message": str}, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as err:
            logger.warning("%s: ignoring an unreadable results table (%s)", file, err)
            continue
        for column, default in _DEFAULTS.items():
            if column not in table.columns:
                table[column] = default
        if set(COLUMNS) <= set(table.columns):
            tables.append(table[COLUMNS])
    if not tables:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.concat(tables, ignore_index=True)
    for column in ("seconds", "quality", "confidence"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def merge_results(output: str | Path, write: bool = True) -> pd.DataFrame:
    """Join the tables of all shards (and earlier runs) in ``output``: the newest row of each pair wins.

    Args:
        output: folder holding ``results.csv`` and/or ``results.shard-*.csv``.
        write: also write the merged table to ``output/results.csv``.

    Returns:
        One row per pair, sorted by pair name.
    """
    output = Path(output)
    table = read_tables(output).drop_duplicates("pair", keep="last").sort_values("pair").reset_index(drop=True)
    if write:
        write_table(table, output / RESULTS_NAME)
    return table


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Write ``table`` to ``path`` through a temporary file: readers never see half a table."""
    tmp = atomic_path(path)
    try:
        table.to_csv(tmp, index=False, float_format="%.4f")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
