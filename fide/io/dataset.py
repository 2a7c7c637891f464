"""Learn2Reg dataset descriptors (``<TASK>_dataset.json``): parsing, validation, pair lists."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DatasetError", "Pair", "Dataset", "find_descriptor", "load_dataset", "unique_pairs", "SPLITS"]

# descriptor key of each split fide knows; "training" lists single images, the others pairs
SPLITS = {
    "val": "registration_val",
    "test": "registration_test",
    "train": "training_paired_images",
}
logger = logging.getLogger(__name__)

_CASE_RE = re.compile(r"_(?P<case>[^_/\\]+)_(?P<mod>\d{4})\.nii(\.gz)?$")


class DatasetError(ValueError):
    """A descriptor, image, landmark or field file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Pair:
    """One registration pair; paths are absolute, ids are the case and modality strings of the file names."""

    fixed: Path
    moving: Path
    fixed_case: str
    fixed_mod: str
    moving_case: str
    moving_mod: str

    @property
    def disp_name(self) -> str:
        """Challenge file name of this pair's field (short form when the modalities are 0000 → 0001)."""
        if (self.fixed_mod, self.moving_mod) == ("0000", "0001"):
            return f"disp_{self.fixed_case}_{self.moving_case}.nii.gz"
        return f"disp_{self.fixed_case}_{self.fixed_mod}_{self.moving_case}_{self.moving_mod}.nii.gz"

    @property
    def name(self) -> str:
        """Case key as the upstream evaluator writes it: ``FIX_MOD<--MOV_MOD``."""
        return f"{self.fixed_case}_{self.fixed_mod}<--{self.moving_case}_{self.moving_mod}"

    def landmarks(self, dest: str = "landmarks") -> tuple[Path, Path]:
        """Landmark CSV paths by the Learn2Reg rule: ``images`` → ``dest``, ``.nii.gz`` → ``.csv``."""
        return _landmark_path(self.fixed, dest), _landmark_path(self.moving, dest)


@dataclass(frozen=True)
class Dataset:
    """A parsed descriptor: its file, its raw dictionary and its pair lists per split."""

    path: Path
    raw: dict
    pairs: dict[str, list[Pair]]

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return str(self.raw.get("name", self.path.name.replace("_dataset.json", "")))

    def split(self, split: str) -> list[Pair]:
        """Pairs of ``split`` ("val", "test" or "train"); an unknown split is an error."""
        if split not in SPLITS:
            raise DatasetError(f"{self.path}: unknown split {split!r}, expected one of {sorted(SPLITS)}")
        return self.pairs[split]

    def default_split(self) -> str:
        """The challenge's rule: "test" when it lists pairs, otherwise "val"."""
        return "test" if self.pairs["test"] else "val"


def _landmark_path(image: Path, dest: str) -> Path:
    parts = list(image.parts)
    for k in range(len(parts) - 1, -1, -1):  # the last "images..." folder, as upstream's str.replace would hit it
        if parts[k].startswith("images"):
            parts[k] = parts[k].replace("images", dest, 1)
            break
    name = parts[-1]
    parts[-1] = name[: -len(".nii.gz")] + ".csv" if name.endswith(".nii.gz") else Path(name).stem + ".csv"
    return Path(*parts)


def _parse_pair(path: Path, root: Path, key: str, index: int, entry: object, check_files: bool) -> Pair:
    where = f"{path}: {key}[{index}]"
    if not isinstance(entry, dict):
        raise DatasetError(f"{where} must be an object with 'fixed' and 'moving', got {type(entry).__name__}")
    for role in ("fixed", "moving"):  # both keys before any file, so the message names what is really wrong
        value = entry.get(role)
        if not isinstance(value, str) or not value:
            raise DatasetError(f"{where}.{role} must be a path string, got {value!r}")
    files = {}
    for role in ("fixed", "moving"):
        # lexically, so a symlinked images folder stays allowed; ".." out of the task folder does not
        if ".." in Path(os.path.normpath(entry[role])).parts or Path(entry[role]).is_absolute():
            raise DatasetError(f"{where}.{role}: {entry[role]!r} leaves the task folder {root}")
        file = (root / entry[role]).resolve()
        if check_files and not file.is_file():
            raise DatasetError(f"{where}.{role} names a missing file: {file}")
        match = _CASE_RE.search(file.name)
        if match is None:
            raise DatasetError(f"{where}.{role}: {file.name} is not named <TASK>_<CASE>_<MOD4>.nii.gz")
        files[role] = (file, match["case"], match["mod"])
    (fixed, fcase, fmod), (moving, mcase, mmod) = files["fixed"], files["moving"]
    return Pair(fixed, moving, fcase, fmod, mcase, mmod)


def find_descriptor(folder: str | Path, choose: str = "give the path of one instead of the folder") -> Path:
    """The single ``*_dataset.json`` under ``folder`` (searched recursively, as a challenge input folder is laid out).

    ``choose`` ends the message when several are found: how the caller's user picks one.

    Raises:
        DatasetError: the folder does not exist, holds no descriptor, or holds several (the message lists them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: input folder not found")
    found = sorted(folder.rglob("*_dataset.json"))
    if not found:
        raise DatasetError(f"{folder}: no *_dataset.json descriptor found")
    if len(found) > 1:
        names = ", ".join(str(p) for p in found)
        raise DatasetError(f"{folder}: {len(found)} descriptors found ({names}); {choose}")
    return found[0]


def load_dataset(path: str | Path, *, check_files: bool = True) -> Dataset:
    """Read and validate a Learn2Reg descriptor.

    Paths in the descriptor are relative to its folder. Pair lists that are absent count as empty; extra keys are
    kept in ``raw`` and otherwise ignored. A folder stands for the one descriptor under it (:func:`find_descriptor`).

    Raises:
        DatasetError: unreadable JSON, a pair list that is not a list, a pair without both paths, a path that
            leaves the descriptor's folder (absolute or through ``..``), or a pair naming a missing file (when
            ``check_files``). The message names the descriptor and the key.
    """
    path = Path(path).resolve()
    if path.is_dir():
        path = find_descriptor(path).resolve()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: descriptor not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: not a readable JSON descriptor ({err})") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: descriptor must be a JSON object, got {type(raw).__name__}")
    pairs: dict[str, list[Pair]] = {}
    for split, key in SPLITS.items():
        entries = raw.get(key, [])
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: {key} must be a list of pairs, got {type(entries).__name__}")
        pairs[split] = [_parse_pair(path, path.parent, key, k, e, check_files) for k, e in enumerate(entries)]
    if not any(pairs.values()):
        raise DatasetError(f"{path}: no pairs under any of {sorted(SPLITS.values())}")
    return Dataset(path=path, raw=raw, pairs=pairs)


def unique_pairs(pairs: list[Pair]) -> list[Pair]:
    """``pairs`` with repeated entries dropped (logged); two different pairs that would share a field are an error.

    A descriptor may list a pair twice (registered once); two entries with the same case ids but different files
    would overwrite each other's ``disp_*.nii.gz``.

    Raises:
        DatasetError: two entries with different files map to the same ``disp_*.nii.gz``.
    """
    seen: dict[str, Pair] = {}
    unique = []
    for pair in pairs:
        earlier = seen.get(pair.disp_name)
        if earlier is None:
            seen[pair.disp_name] = pair
            unique.append(pair)
        elif (earlier.fixed, earlier.moving) == (pair.fixed, pair.moving):
            logger.warning("%s: listed more than once; registered once", pair.name)
        else:
            raise DatasetError(
                f"{pair.fixed}: pairs {earlier.name} ({earlier.fixed.parent.name}/) and {pair.name} "
                f"({pair.fixed.parent.name}/) would both write {pair.disp_name}; rename one"
            )
    return unique
