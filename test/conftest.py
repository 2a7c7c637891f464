"""Small synthetic SHG-like / bright-field-like images for stage tests (the full generator lives in fide.synth)."""

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from fide import geometry
from fide.io import load_dataset
from fide.synth import make_task

# reduced search and iterations: a real registration of a 96 px pair in seconds (the operations tests); with the
# fast_engine fixture the search's fine sweep and RANSAC (module constants) are cut down too
FAST_CONFIG = {
    "search": {"angle_step_deg": 30.0, "scale_steps": 3, "top_k": 1},
    "optimise": {"restarts": 1, "lncc_iterations": 4, "nmi_iterations": 4, "size_px": 96, "levels": 1},
    "prealign": {"size_px": 96},
    "encoder": {"features": "handcrafted"},
}


@pytest.fixture
def fast_engine(monkeypatch):
    """FAST_CONFIG's companion for registrations in this process: 3 fine angles and 1 fine scale per search
    candidate, 100 RANSAC samples (spawned workers and subprocesses keep the defaults)."""
    from fide.prealign import prealign, search

    monkeypatch.setattr(search, "REFINE_ANGLE_STEPS", 3)
    monkeypatch.setattr(search, "REFINE_SCALE_STEPS", 1)
    monkeypatch.setattr(prealign, "RANSAC_ITERATIONS", 100)


def blob_pair(size: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An aligned pair: fixed (1, H, W) bright structures on black, moving (3, H, W) pink-purple on white.

    The core is an off-centre ellipse with random smooth texture, asymmetric so that rotations are identifiable.
    """
    generator = torch.Generator().manual_seed(seed)
    grid = geometry.identity_grid((size, size))
    centre = size * 0.5
    radius = ((grid[0] - centre) / (0.42 * size)) ** 2 + ((grid[1] - centre) / (0.34 * size)) ** 2
    core = (radius < 1).float()
    core = core * (1 - ((grid[0] - 0.3 * size) ** 2 + (grid[1] - 0.62 * size) ** 2 < (0.08 * size) ** 2).float())
    noise = torch.rand(1, 1, size // 8, size // 8, generator=generator)
    texture = torch.nn.functional.interpolate(noise, size=(size, size), mode="bicubic", align_corners=True)[0, 0]
    fibres = (texture > 0.55).float() * core
    nuclei = (texture < 0.3).float() * core
    shg = 5 + 200 * fibres * (0.5 + 0.5 * torch.rand(size, size, generator=generator))
    shg = shg * (core > 0) + 1.0
    white = torch.full((3, size, size), 242.0)
    tissue = torch.stack([torch.full_like(core, 215.0), torch.full_like(core, 150.0), torch.full_like(core, 180.0)])
    bf = torch.where(core > 0, tissue, white)
    bf = (
        bf
        - fibres * torch.tensor([0.0, 50.0, 20.0]).view(3, 1, 1)
        - nuclei * torch.tensor([90.0, 80.0, 30.0]).view(3, 1, 1)
    )
    return shg[None].clamp(0, 255), bf.clamp(0, 255)


def move(image: torch.Tensor, affine: torch.Tensor, fill: float) -> torch.Tensor:
    """Moving image whose fixed→moving map is ``affine``: moving(q) = image(affine^-1 q)."""
    disp = geometry.affine_to_disp(torch.linalg.inv(affine)[None], image.shape[-2:])
    inside = geometry.warp(torch.ones_like(image[None, :1]), disp) > 0.999
    warped = geometry.warp(image[None], disp)
    return torch.where(inside, warped, torch.full_like(warped, fill))[0]


def similarity(angle_deg: float, scale: float, size: int, shift=(0.0, 0.0)) -> torch.Tensor:
    centre = torch.tensor([(size - 1) / 2, (size - 1) / 2])
    return geometry.similarity_matrix(
        torch.tensor([math.radians(angle_deg)]), torch.tensor([scale]), centre, centre + torch.tensor(shift)
    )[0]


@pytest.fixture
def pair128():
    return blob_pair(128, seed=3)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> Path:
    """Descriptor of a 2-pair synthetic task at 96 px, shared by the operations tests (never written to)."""
    return make_task(tmp_path_factory.mktemp("tiny_task"), 2, 96, seed=5)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster and leaves the shared cores alone (use with pytest.mark.usefixtures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fibre_texture(size: int, seed: int) -> torch.Tensor:
    """(1, 1, H, W) fibre-like texture in [0, 1]: thresholded band-limited noise."""
    from fide.prealign.fibre_match import band_pass

    noise = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    smooth = band_pass(noise, 1.5, 6.0)
    return (smooth / smooth.std()).clamp(0, 3) / 3


def empty_core_pair(size: int, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A nearly empty SHG: the moving texture seen only inside seven disks; the moving image: texture everywhere.

    Returns fixed (1, 1, H, W) and moving (1, 1, H, W) intensities; ``pose`` maps fixed to moving pixels.
    """
    texture = fibre_texture(size, seed=4)
    seen_from_fixed = geometry.warp(texture, geometry.affine_to_disp(pose[None], (size, size)))
    grid = geometry.identity_grid((size, size))
    disks = torch.zeros(size, size)
    centres = [(0.35, 0.4), (0.6, 0.65), (0.4, 0.7), (0.675, 0.35), (0.5, 0.5), (0.275, 0.6), (0.725, 0.575)]
    for (ci, cj), radius in zip(centres, [0.1, 0.09, 0.07, 0.065, 0.055, 0.05, 0.05]):
        disks += ((grid[0] - ci * size) ** 2 + (grid[1] - cj * size) ** 2 < (radius * size) ** 2).float()
    return seen_from_fixed * disks, texture


# the fibre tests' nearly empty SHG (test_fibres.py, test_fibre_texture.py): lengths scale with the image side / 834,
# the sparse_fibres fixture's give ~2-8 px bands at 200 px, where the test texture lives
SPARSE_SIZE = 200


@pytest.fixture
def sparse_fibres(monkeypatch):
    """The fibre modules' constants for the sparse test texture: both grids at its full 200 px, wider bands, patches
    and smoothing, a 6° grid."""
    from fide.prealign import fibre_texture, fibres

    monkeypatch.setattr(fibres, "GRID_SIZE_PX", SPARSE_SIZE)
    monkeypatch.setattr(fibres, "REFINE_SIZE_PX", SPARSE_SIZE)
    monkeypatch.setattr(fibres, "GRID_BAND_PX", (6.0, 30.0))
    monkeypatch.setattr(fibres, "ANGLE_STEP_DEG", 6.0)
    monkeypatch.setattr(fibre_texture, "TEXTURE_BAND_PX", (4.0, 24.0))
    monkeypatch.setattr(fibre_texture, "PATCH_SMOOTH_PX", 12.0)
    monkeypatch.setattr(fibre_texture, "PATCH_MAX_RADIUS_PX", 400.0)


SPARSE_POSE = similarity(150.0, 1.1, SPARSE_SIZE, shift=(4.0, -6.0))


@pytest.fixture(scope="module")
def sparse_pair():
    """Fixed and moving (1, 1, 200, 200) intensities of :func:`empty_core_pair` and the pose between them."""
    return (*empty_core_pair(SPARSE_SIZE, SPARSE_POSE), SPARSE_POSE)


@pytest.fixture(scope="module")
def task_template(tmp_path_factory):
    """A 4-pair 64 px synthetic task, made once per module (the runner's and the executors' tests)."""
    return make_task(tmp_path_factory.mktemp("template"), 4, 64, seed=2).parent


@pytest.fixture
def task(task_template, tmp_path):
    """A fresh copy of :func:`task_template`; returns its descriptor path (modules with their own ``task`` keep it)."""
    root = shutil.copytree(task_template, tmp_path / "task")
    return next(root.glob("*_dataset.json"))


def val_pairs(descriptor):
    """The val pairs of a descriptor, images not checked."""
    return load_dataset(descriptor, check_files=False).split("val")


def read_results(output, name="results.csv"):
    """A results table written by the runner, indexed by pair."""
    return pd.read_csv(output / name, keep_default_na=False).set_index("pair")
