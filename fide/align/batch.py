"""``fide align --pairs pairs.csv``: many pairs through :func:`fide.runner.register_pairs` (failure isolation,
resume, sharding, progress bar, ``results.csv``), one output folder ``OUT/<name>/`` per pair."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from fide.config import FideConfig
from fide.features import ModalityEncoders
from fide.io import DatasetError, Pair
from fide.pipeline import RegistrationResult

from .registration import Registration, register_sources
from .source import open_source

__all__ = ["AlignPair", "read_pairs", "AlignWorker", "is_complete", "as_result"]

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^\w.\- ]+")


@dataclass(frozen=True)
class AlignPair(Pair):
    """A row of ``pairs.csv``: its ``name`` is the output folder (``OUT/<name>/``) and the results row key."""

    label: str = ""

    @property
    def name(self) -> str:
        return self.label

    @property
    def disp_name(self) -> str:
        return f"{self.label}/disp.nii.gz"


def read_pairs(path: str | Path) -> list[AlignPair]:
    """Parse ``pairs.csv``: columns ``fixed,moving[,name]``; relative paths are relative to the CSV's folder.

    Names default to the moving file's stem; they must be unique (they are folders).

    Raises:
        DatasetError: unreadable CSV, missing columns, empty, or duplicate names.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DatasetError(f"{path}: cannot read pairs table ({str(err).splitlines()[0]})") from None
    missing = {"fixed", "moving"} - set(table.columns)
    if missing:
        raise DatasetError(f"{path}: pairs table needs columns fixed,moving[,name]; missing {sorted(missing)}")
    if table.empty:
        raise DatasetError(f"{path}: pairs table has no rows")
    pairs = []
    for row in table.itertuples(index=False):
        fixed, moving = (Path(v) if Path(v).is_absolute() else path.parent / v for v in (row.fixed, row.moving))
        name = getattr(row, "name", "") or moving.name.split(".")[0]
        name = _UNSAFE.sub("_", name).strip() or "pair"
        pairs.append(AlignPair(fixed, moving, name, "", name, "", label=name))
    names = [p.name for p in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"{path}: pair names must be unique (they are folders), repeated: {duplicates}")
    return pairs


def as_result(reg: Registration) -> RegistrationResult:
    """The runner's view of a registration (quality, notes, the working-resolution field)."""
    return RegistrationResult(
        reg.working_disp,
        torch.from_numpy(reg.affine).float(),
        reg.quality,
        notes=list(reg.notes),
        confidence=reg.confidence,
        confidence_basis=reg.confidence_basis,
        mirrored=reg.mirrored,
        scores=dict(reg.scores),
        flag_reason=reg.flag_reason,
    )


def is_complete(output: Path, pair: Pair) -> bool:
    """Whether a pair's folder holds a finished result (``transform.json`` is written last)."""
    folder = output / pair.name
    return (folder / "transform.json").is_file() and (folder / "transform.tfm").is_file()


@dataclass(frozen=True)
class AlignWorker:
    """The per-pair function :func:`fide.runner.register_pairs` calls: register, write ``OUT/<name>/``.

    Picklable (worker processes, Dask): the encoders come with each call, from the executor.
    """

    output: Path
    cfg: FideConfig
    working_px: int
    fixed_pixel_size: float | None = None
    moving_pixel_size: float | None = None
    device: torch.device | None = None
    inverse: bool = False
    compression: str = "zlib"

    def __call__(self, pair: Pair, encoders: ModalityEncoders | None = None) -> RegistrationResult:
        folder = self.output / pair.name
        (folder / "transform.json").unlink(missing_ok=True)  # an earlier result must not look complete if this fails
        fixed = open_source(pair.fixed, self.fixed_pixel_size, "fixed")
        moving = open_source(pair.moving, self.moving_pixel_size, "moving")
        reg = register_sources(
            fixed, moving, self.cfg, working_px=self.working_px, device=self.device, encoders=encoders
        )
        reg.save(folder, inverse=self.inverse, compression=self.compression)
        logger.info("%s: %s", pair.name, reg.summary())
        return as_result(reg)
