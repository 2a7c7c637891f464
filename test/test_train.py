"""Training of the encoders: augmentation, data, a few steps lowering the loss, resume, and ``fide train``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fake_cuda import FakeCuda, without_gpu

from fide.config import TrainConfig
from fide.features.encoders import load_checkpoint, load_encoders
from fide.io import load_dataset
from fide.train import (
    PairedTrainingSet,
    augment_pair,
    bezier_curve,
    bnce_validator,
    last_checkpoint_path,
    load_training_pair,
    random_affine,
    train,
)

_TINY = {"out_channels": 1, "features": (4, 4, 8, 8, 8, 4), "size_px": 64}  # a new network for train()


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random blobs and streaks in [0, 1], (size, size)."""
    noise = torch.from_numpy(rng.random((1, 1, size // 4, size // 4))).float()
    field = torch.nn.functional.interpolate(noise, size=(size, size), mode="bicubic", align_corners=True)[0, 0]
    return ((field - field.min()) / (field.max() - field.min())).numpy()


def _write(path: Path, array: np.ndarray) -> None:
    """Write (H, W) grey or (H, W, 3) RGB uint8 so that fide's read_image returns array axes (H, W)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(np.swapaxes(array, 0, 1))  # SimpleITK reverses the spatial axes on read
    image = sitk.GetImageFromArray(data.astype(np.uint8), isVector=array.ndim == 3)
    sitk.WriteImage(image, str(path))


def _pair_images(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An aligned toy pair: SHG texture inside a disc; BF white outside, pink tissue darker where SHG is bright."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.42 * size) ** 2
    texture = _texture(rng, size)
    shg = np.where(disc, 255 * texture**2, rng.integers(0, 2, (size, size)))
    tissue = np.stack([200 - 60 * texture, 140 - 90 * texture, 175 - 50 * texture], axis=-1)
    bf = np.where(disc[..., None], tissue, 244.0)
    return shg, bf


def make_task(root: Path, size: int = 64, train_pairs: int = 3, val_pairs: int = 1, seed: int = 0) -> Path:
    """A Learn2Reg-style toy task: aligned training pairs and shifted validation pairs with landmarks."""
    rng = np.random.default_rng(seed)
    entries: dict[str, list] = {"training_paired_images": [], "registration_val": []}
    for k in range(train_pairs + val_pairs):
        case = f"{k + 1:04d}"
        shg, bf = _pair_images(rng, size)
        split = "training_paired_images" if k < train_pairs else "registration_val"
        if split == "registration_val":
            bf = np.roll(bf, (3, -2), axis=(0, 1))  # moving = fixed shifted by (+3, -2) px
            points = rng.uniform(size * 0.3, size * 0.7, (6, 2))
            for mod, pts in (("0000", points), ("0001", points + [3, -2])):
                lm = root / "landmarksTr" / f"TOY_{case}_{mod}.csv"
                lm.parent.mkdir(parents=True, exist_ok=True)
                np.savetxt(lm, pts, delimiter=",", fmt="%.3f")
        _write(root / "imagesTr" / f"TOY_{case}_0000.nii.gz", shg)
        _write(root / "imagesTr" / f"TOY_{case}_0001.nii.gz", bf)
        entries[split].append(
            {"fixed": f"./imagesTr/TOY_{case}_0000.nii.gz", "moving": f"./imagesTr/TOY_{case}_0001.nii.gz"}
        )
    path = root / "TOY_dataset.json"
    path.write_text(json.dumps({"name": "TOY", **entries}))
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("toy"))


def test_random_affine_is_identity_without_ranges() -> None:
    cfg = TrainConfig(max_scale=0, max_translation=0, max_rotation_rad=0, max_shear=0)
    torch.testing.assert_close(random_affine((20, 30), cfg, torch.Generator().manual_seed(0)), torch.eye(3))
    affine = random_affine((20, 30), TrainConfig(), torch.Generator().manual_seed(1))
    assert affine.shape == (3, 3) and not torch.allclose(affine, torch.eye(3))


def test_bezier_curve_straight_line_is_identity_and_range() -> None:
    image = torch.rand(1, 8, 8)
    torch.testing.assert_close(bezier_curve(image, torch.tensor([0.0, 0.5, 0.5, 1.0])), image)
    inverted = bezier_curve(image, torch.tensor([1.0, 0.5, 0.5, 0.0]))
    torch.testing.assert_close(inverted, 1 - image)
    curved = bezier_curve(image, torch.rand(4))
    assert float(curved.min()) >= 0 and float(curved.max()) <= 1


def test_augment_pair_keeps_the_pair_aligned() -> None:
    """Geometry is joint: an identical pair stays identical (intensity curves off)."""
    base = torch.rand(1, 1, 32, 32)
    cfg = TrainConfig(flip_prob=1.0, intensity_prob=0.0)
    mask = torch.ones(1, 1, 32, 32)
    fixed, moving, fixed_mask, moving_mask = augment_pair(
        base, base.expand(1, 3, 32, 32), mask, mask, cfg, torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(fixed, base)
    for channel in range(3):
        torch.testing.assert_close(moving[:, channel : channel + 1], fixed)
    torch.testing.assert_close(fixed_mask, moving_mask)
    assert set(torch.unique(fixed_mask).tolist()) <= {0.0, 1.0}


def test_intensity_curves_are_independent_per_image() -> None:
    base = torch.rand(1, 1, 16, 16)
    cfg = TrainConfig(flip_prob=0, affine_prob=0, intensity_prob=1.0)
    mask = torch.ones(1, 1, 16, 16)
    fixed, moving, _, _ = augment_pair(base, base.expand(1, 3, 16, 16), mask, mask, cfg, torch.Generator())
    assert not torch.allclose(fixed, moving[:, :1])
    assert float(fixed.min()) == 0 and float(fixed.max()) == 1  # re-normalised


def test_training_pairs_load_at_working_size_and_items_are_reproducible(task: Path) -> None:
    pairs = load_dataset(task).split("train")
    loaded = load_training_pair(pairs[0], size_px=32)
    assert loaded.fixed.shape == (1, 1, 32, 32) and loaded.moving.shape == (1, 3, 32, 32)
    assert 0.2 < float(loaded.moving_mask.mean()) < 0.9  # the disc of tissue, not the white background
    samples = PairedTrainingSet([loaded], TrainConfig(crop_px=24, patch_px=16))
    item = samples[0]
    assert item["fixed"].shape == (1, 24, 24) and item["moving"].shape == (3, 24, 24)
    torch.testing.assert_close(samples[0]["moving"], item["moving"])
    samples.set_epoch(1)
    assert not torch.allclose(samples[0]["moving"], item["moving"])


def test_a_few_steps_lower_the_loss(task: Path) -> None:
    """Fixed patch draws on one pair: 12 Adam steps lower B-NCE clearly."""
    torch.manual_seed(0)
    pairs = [load_training_pair(p, size_px=32) for p in load_dataset(task).split("train")[:1]]
    cfg = TrainConfig(num_patches=8, patch_px=16, crop_px=32, pool_kernel=3, seed=0)
    score = bnce_validator(pairs, cfg)
    from fide.features.encoders import ModalityEncoders

    encoders = ModalityEncoders(1, _TINY["features"], 32)
    before = score(encoders)["score"]
    optimizer = torch.optim.Adam(encoders.parameters(), lr=3e-3)
    from fide.losses import BatchNCELoss
    from fide.train import bnce_objective

    loss_fn = BatchNCELoss(pool_kernel=3)
    pair = pairs[0]
    for step in range(12):
        fixed_map, moving_map = encoders(pair.fixed, pair.moving)
        generator = torch.Generator().manual_seed(step % 4)
        parts = bnce_objective(fixed_map, moving_map, pair.fixed_mask, pair.moving_mask, loss_fn, 8, 16, generator)
        optimizer.zero_grad()
        (0.1 * sum(parts)).backward()
        optimizer.step()
    after = score(encoders)["score"]
    assert after < before - 0.02, (before, after)


def test_train_max_steps_resume_and_checkpoints(task: Path, tmp_path: Path) -> None:
    out = tmp_path / "enc.pt"
    cfg = TrainConfig(max_steps=2, num_patches=8, patch_px=32, validation="bnce", seed=1)
    first = train(task, out, cfg, _TINY, progress=False)
    assert first.steps == 2 and out.is_file() and last_checkpoint_path(out).is_file()
    assert first.validation == "val_bnce" and math.isfinite(first.best_score)
    state = load_checkpoint(last_checkpoint_path(out))
    assert state["train_state"]["step"] == 2 and "optimizer" in state

    cfg.max_steps = 4
    second = train(task, out, cfg, _TINY, resume=True, progress=False)
    assert second.steps == 4 and second.epochs == 1  # 3 pairs: epoch 0 done at step 3
    assert [h["step"] for h in second.history] == [2, 3, 4]
    best = load_checkpoint(out)["training"]
    assert best["validation"] == "val_bnce" and best["step"] in (2, 3, 4)
    encoders = load_encoders(out)
    assert encoders.hparams["size_px"] == _TINY["size_px"]


@without_gpu
def test_training_keeps_every_tensor_on_the_requested_device(task: Path, tmp_path: Path) -> None:
    """Under the CPU stand-in for CUDA (CI has no GPU) a device mix-up raises; the numbers match a CPU run."""
    cfg = TrainConfig(max_steps=2, num_patches=8, patch_px=32, validation="bnce", seed=1)
    plain = train(task, tmp_path / "cpu.pt", cfg, _TINY, progress=False)
    with FakeCuda():
        on_cuda = train(task, tmp_path / "cuda.pt", cfg, _TINY, device="cuda", progress=False)
    assert on_cuda.steps == 2 and on_cuda.history == plain.history


def test_custom_validator_and_single_process_ddp(task: Path, tmp_path: Path, monkeypatch) -> None:
    """A 1-process gloo group: the loop wraps the encoders in DistributedDataParallel."""
    import torch.distributed as dist

    calls = []

    def validator(encoders) -> dict[str, float]:
        calls.append(encoders.training)
        return {"score": 1.0 / (len(calls))}

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        result = train(
            task,
            tmp_path / "ddp.pt",
            TrainConfig(max_steps=2, num_patches=8, patch_px=32),
            _TINY,
            validator=validator,
            validation_name="toy",
            progress=False,
        )
    finally:
        dist.destroy_process_group()
    assert result.steps == 2 and calls == [False]
    assert load_checkpoint(tmp_path / "ddp.pt")["training"]["validation"] == "toy"


@pytest.mark.slow
def test_prealign_validator_scores_landmark_error(task: Path) -> None:
    pytest.importorskip("fide.pipeline")
    from fide.train import load_validation_pairs, prealign_tre_validator

    pairs = load_validation_pairs(load_dataset(task).split("val"))
    assert len(pairs) == 1 and pairs[0].fixed_points.shape == (6, 2)
    from fide.features.encoders import ModalityEncoders

    validator = prealign_tre_validator(pairs)
    figures = validator(ModalityEncoders(1, _TINY["features"], 64))
    assert math.isfinite(figures["score"]) and figures["score"] == figures["tre_px"]
    assert figures["score"] < 2 * math.hypot(3, 2) + 1  # sane: about the true shift at most, not garbage


def test_cli_train_max_steps(task: Path, tmp_path: Path) -> None:
    from fide.cli.main import main

    out = tmp_path / "cli.pt"
    code = main(
        ["train", str(task), "--out", str(out), "--max-steps", "5", "--validation", "bnce", "--no-progress"]
        + ["--device", "cpu", "--threads", "1"]
    )
    assert code == 0 and out.is_file()
    assert load_checkpoint(last_checkpoint_path(out))["train_state"]["step"] == 5


def test_cli_train_rejects_a_task_without_training_pairs(tmp_path: Path) -> None:
    from fide.cli.main import main

    root = tmp_path / "empty"
    dataset = make_task(root, train_pairs=0, val_pairs=1)
    assert main(["train", str(dataset), "--out", str(tmp_path / "x.pt"), "--max-steps", "1"]) == 2
