"""fide.synth.collagen: fibres in the stroma; SHG drawn anew keeps the layout and loses the fibres' match."""

import numpy as np
from scipy import ndimage

from fide.synth.collagen import collagen, independent_shg_fibres

SIZE = 160


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _fine(image: np.ndarray) -> np.ndarray:
    """The texture finer than ~3 px (fibres are ~0.5 px sigma here), without the stroma's layout."""
    return image - ndimage.gaussian_filter(image, 3)


def _tissue() -> np.ndarray:
    rows, cols = np.mgrid[:SIZE, :SIZE]
    return (np.hypot(rows - SIZE / 2, cols - SIZE / 2) < 0.4 * SIZE).astype(np.float32)


def test_collagen_draws_stroma_and_two_fibre_images_deterministically():
    tissue, f = _tissue(), SIZE / 834
    params: dict = {}
    col = collagen(SIZE, f, tissue, np.random.default_rng(3), params)
    again = collagen(SIZE, f, tissue, np.random.default_rng(3), {})
    assert {"stroma", "shg", "bf", "theta"} <= set(col)
    for name in ("stroma", "shg", "bf"):
        assert col[name].shape == (SIZE, SIZE) and col[name].dtype == np.float32
        np.testing.assert_array_equal(col[name], again[name])
    assert 0.4 <= params["stroma_frac"] <= 0.95 and params["n_fibres"] > 10
    # the same fibres seen twice: the two modalities' fine textures correlate
    assert _correlation(_fine(col["shg"]), _fine(col["bf"])) > 0.3


def test_independent_fibres_keep_the_layout_and_lose_the_fine_match():
    tissue, f = _tissue(), SIZE / 834
    col = collagen(SIZE, f, tissue, np.random.default_rng(4), {})
    shg = independent_shg_fibres(SIZE, f, tissue, col, np.random.default_rng(5))
    assert _correlation(shg, col["bf"]) > 0.3  # the stroma's layout, shared
    assert abs(_correlation(_fine(shg), _fine(col["bf"]))) < 0.1  # the fibres, drawn anew


def test_independent_fibres_stay_in_the_stroma():
    tissue, f = _tissue(), SIZE / 834
    col = collagen(SIZE, f, tissue, np.random.default_rng(4), {})
    col["stroma"][:, : SIZE // 2] = 0.0  # no stroma on the left: no collagen there
    shg = independent_shg_fibres(SIZE, f, tissue, col, np.random.default_rng(5))
    assert shg.shape == (SIZE, SIZE) and float(shg.sum()) > 0
    assert float(np.abs(shg[:, : SIZE // 2]).max()) == 0.0
