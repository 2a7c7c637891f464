"""Learned encoders: shapes at any size, the shared input normalisation, common range, checkpoints, shipped weights."""

from __future__ import annotations

import pytest
import torch

from fide.features.encoders import (
    DEFAULT_WEIGHTS,
    ModalityEncoders,
    common_range,
    encode,
    learned_features,
    load_checkpoint,
    load_encoders,
    minmax_normalise,
    save_checkpoint,
    working_shape,
)

_FEATURES = (4, 4, 8, 8, 8, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


def _encoders(out_channels: int = 1, size_px: int = 48) -> ModalityEncoders:
    torch.manual_seed(0)
    return ModalityEncoders(out_channels, _FEATURES, size_px).eval()


def _raw_pair(height: int = 40, width: int = 36, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    fixed = 255 * torch.rand(1, 1, height, width, generator=generator) ** 3
    moving = 255 * torch.rand(1, 3, height, width, generator=generator)
    return fixed, moving


@pytest.mark.parametrize("size", [(16, 16), (37, 50), (5, 9)])
def test_forward_keeps_any_size(size: tuple[int, int]) -> None:
    encoders = _encoders(out_channels=2)
    fixed_map, moving_map = encoders(torch.rand(2, 1, *size), torch.rand(2, 3, *size[::-1]))
    assert fixed_map.shape == (2, 2, *size)
    assert moving_map.shape == (2, 2, *size[::-1])


def test_forward_checks_channels() -> None:
    encoders = _encoders()
    with pytest.raises(ValueError, match="fixed must be"):
        encoders(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="moving must be"):
        encoders(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="features"):
        ModalityEncoders(1, (4, 4, 4))


def test_encode_shapes_range_and_working_grid() -> None:
    encoders = _encoders(size_px=24)
    fixed, moving = _raw_pair(40, 36)
    moving = torch.nn.functional.pad(moving, (0, 4, 0, 8), value=255.0)  # a moving image of another size
    fixed_map, moving_map = encode(fixed, moving, encoders)
    assert fixed_map.shape == (1, 1, 40, 36) and moving_map.shape == (1, 1, 48, 40)
    assert float(fixed_map.min()) >= 0 and float(fixed_map.max()) <= 1
    small_fixed, small_moving = encode(fixed, moving, encoders, restore_size=False)
    factor = 24 / 40  # one factor for both images, from the fixed image's longest side
    assert small_fixed.shape[-2:] == working_shape((40, 36), factor) == (24, 22)
    assert small_moving.shape[-2:] == working_shape((48, 40), factor)


def test_encode_applies_the_training_normalisation() -> None:
    """Raw intensity units do not matter (min-max), and encode = forward on min-max inputs (same as training)."""
    encoders = _encoders(size_px=64)
    fixed, moving = _raw_pair(32, 32)
    maps = encode(fixed, moving, encoders, normalise_output=False)
    rescaled = encode(3 * fixed + 7, 0.5 * moving + 20, encoders, normalise_output=False)
    direct = encoders(minmax_normalise(fixed), minmax_normalise(moving))
    for a, b, c in zip(maps, rescaled, direct):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a, c.detach())


def test_common_range_maps_the_shared_percentiles() -> None:
    fixed = torch.linspace(0, 10, 1000).view(1, 1, 25, 40)
    moving = torch.linspace(2, 20, 1000).view(1, 1, 25, 40)
    fixed_out, moving_out = common_range(fixed, moving)
    lo, hi = max(0.1, 2.18), min(9.9, 19.82)  # the larger 1st and the smaller 99th percentile
    torch.testing.assert_close(fixed_out, ((fixed - lo) / (hi - lo)).clamp(0, 1), atol=2e-3, rtol=0)
    assert float(moving_out.max()) == 1.0 and float(fixed_out.min()) == 0.0
    with pytest.raises(ValueError, match="percentiles"):
        common_range(fixed, moving, low=50, high=10)


def test_learned_features_serve_pipeline_grids() -> None:
    encoders = _encoders(size_px=24)
    fixed, moving = _raw_pair(40, 40)
    features = learned_features(fixed[0], moving[0], encoders)
    fixed_map, moving_map = features(torch.rand(1, 1, 20, 20), torch.rand(1, 1, 24, 24))
    assert fixed_map.shape == (1, 1, 20, 20) and moving_map.shape == (1, 1, 24, 24)


def test_checkpoint_round_trip(tmp_path) -> None:
    encoders = _encoders(out_channels=2, size_px=32)
    path = save_checkpoint(tmp_path / "enc.pt", encoders, training={"step": 3, "note": "x"})
    loaded = load_encoders(path)
    assert loaded.hparams == encoders.hparams and not loaded.training
    for key, value in encoders.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    fixed, moving = _raw_pair()
    for a, b in zip(encode(fixed, moving, encoders), encode(fixed, moving, loaded)):
        torch.testing.assert_close(a, b)
    assert load_checkpoint(path)["training"] == {"step": 3, "note": "x"}


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_encoders(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a fide encoder checkpoint"):
        load_encoders(bad)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable"):
        load_encoders(tmp_path / "text.pt")


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="shipped weights not built in this checkout")
def test_shipped_weights_load_and_are_small() -> None:
    assert DEFAULT_WEIGHTS.stat().st_size <= 20 * 2**20
    encoders = load_encoders()
    fixed, moving = _raw_pair(64, 64)
    fixed_map, moving_map = encode(fixed, moving, encoders)
    assert fixed_map.shape == (1, encoders.out_channels, 64, 64)
    assert torch.isfinite(fixed_map).all() and torch.isfinite(moving_map).all()
