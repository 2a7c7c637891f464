"""Aligned synthetic SHG / H&E bright-field pairs of one tissue-microarray core.

One latent tissue (core outline, collagen fibres, nuclei, fat) is rendered twice:

* **SHG** sees only fibrillar collagen, and only part of it: each fibre has its own SHG efficiency, some are invisible,
  and the signal follows the fibre's angle to the laser polarisation (``cos^2``), so no intensity map links the
  modalities. Nuclei, fat and holes are dark; the detector adds an offset of 1-2 counts (not clean zero) and shot noise.
* **BF** is Beer-Lambert absorption of hematoxylin (nuclei, cytoplasm) and eosin (all stroma and every fibre) under a
  per-image illuminant, with stain, strength, blur and noise varying per core.

All lengths are given at the challenge size 834 px and scaled by ``size / 834`` (fibres ~2 px wide at 834).
Array order is (i, j) throughout; images are channel-first in memory.

The collagen (stroma and fibres) is drawn in :mod:`fide.synth.collagen`, noise fields and point draws in
:mod:`fide.synth.random_fields`; this module draws the core, nuclei and fat and renders the two images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

from fide.config import REFERENCE_SIDE_PX

from .collagen import collagen, independent_shg_fibres
from .random_fields import sample_points, smooth_noise

__all__ = ["TissueInfo", "make_aligned_pair", "REFERENCE_SIZE"]

REFERENCE_SIZE = REFERENCE_SIDE_PX  # lengths below are in pixels at this size

# optical-density stain vectors (R, G, B), Macenko's typical H&E values; perturbed per image
_HEMATOXYLIN = np.array([0.5626, 0.7201, 0.4062])
_EOSIN = np.array([0.2159, 0.8012, 0.5581])


@dataclass
class TissueInfo:
    """Latent maps of an aligned pair, on the common (fixed) grid.

    Attributes:
        tissue: (H, W) float32 in [0, 1], 1 on tissue (what BF shows as stained), 0 on background, holes, tears and
            fat vacuoles.
        landmark_map: (H, W) float32 >= 0, salient structure (fibre crossings, bright fibres, nuclei) whose local
            maxima make good landmarks; noise-free.
        params: scalars drawn for this core (for logs and tests).
    """

    tissue: np.ndarray
    landmark_map: np.ndarray
    params: dict = field(default_factory=dict)


def _core_mask(size: int, f: float, rng: np.random.Generator, params: dict) -> np.ndarray:
    """Roughly round core with a wobbly rim; sometimes cut (partial), torn by cracks or with holes. (H, W) in [0, 1]."""
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.normal(0, 0.04 * size, 2)
    radius = size * rng.uniform(0.36, 0.55)
    phi = np.arctan2(grid[1] - centre[1], grid[0] - centre[0])
    wobble = sum(rng.normal(0, 0.05 / k) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
    rim = np.hypot(grid[0] - centre[0], grid[1] - centre[1]) / (radius * (1 + wobble))
    rim = rim + 0.03 * smooth_noise((size, size), 25 * f + 2, rng)  # ragged edge
    mask = rim < 1
    if rng.random() < 0.15:  # partial core: a chord cut off
        angle = rng.uniform(0, 2 * np.pi)
        normal = np.array([np.cos(angle), np.sin(angle)])
        depth = rng.uniform(0.2, 0.7) * radius
        mask &= (grid[0] - centre[0]) * normal[0] + (grid[1] - centre[1]) * normal[1] < radius - depth
    n_tears = int(rng.choice([0, 0, 0, 1, 1, 2]))
    for _ in range(n_tears):  # cracks: narrow meandering gaps running part-way across the core
        angle = rng.uniform(0, np.pi)
        normal = np.array([np.cos(angle), np.sin(angle)])
        along = (grid[0] - centre[0]) * -normal[1] + (grid[1] - centre[1]) * normal[0]
        signed = (grid[0] - centre[0]) * normal[0] + (grid[1] - centre[1]) * normal[1] - rng.uniform(-0.6, 0.6) * radius
        signed = (
            signed
            + 10 * f * smooth_noise((size, size), 40 * f + 2, rng)
            + 3 * f * smooth_noise((size, size), 8 * f + 2, rng)
        )
        width = rng.uniform(1.0, 6.0) * f + 0.6
        start = rng.uniform(-1.2, 0.3) * radius
        extent = (along > start) & (along < start + rng.uniform(0.6, 2.0) * radius)
        mask &= ~((np.abs(signed) < width * (0.6 + 0.4 * np.abs(smooth_noise((size, size), 20 * f + 2, rng)))) & extent)
    if rng.random() < 0.35:  # holes (lumina, lost fragments)
        holes = smooth_noise((size, size), rng.uniform(15, 45) * f + 2, rng)
        mask &= holes < rng.uniform(1.6, 2.4)
    params.update(core_radius=float(radius / size), tears=int(n_tears))
    return ndimage.gaussian_filter(mask.astype(np.float32), 0.6 * f + 0.3)


def _disk_kernels(f: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Soft elliptical nucleus footprints: four round-ish sizes, and spindles elongated at four angles."""
    kernels = []
    for k in range(8):  # 0-3 round-ish nuclei of cellular areas, 4-7 spindles at 0, 45, 90, 135 degrees
        if k < 4:
            radius, elong, angle = rng.uniform(2.2, 5.0) * f + 0.6, rng.uniform(1.0, 1.5), rng.uniform(0, np.pi)
        else:
            radius, elong, angle = rng.uniform(1.6, 2.4) * f + 0.5, rng.uniform(1.8, 3.0), (k - 4) * np.pi / 4
        half = int(np.ceil(radius * elong)) + 2
        gi, gj = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
        u = gi * np.cos(angle) + gj * np.sin(angle)
        v = -gi * np.sin(angle) + gj * np.cos(angle)
        r = np.hypot(u / (radius * elong), v / radius)
        kernels.append(np.clip((1.2 - r) / 0.4, 0, 1))
    return kernels


def _nuclei(size: int, f: float, tissue: np.ndarray, col: dict, rng: np.random.Generator, params: dict) -> np.ndarray:
    """Nuclei density (H, W) in [0, ~1.5]: crowded round nuclei in cellular areas, sparse spindles along fibres."""
    cellular = tissue * (1 - col["stroma"])
    richness = rng.uniform(0.3, 1.3)  # some cores are nuclei-rich
    n_cell = int(richness * cellular.sum() / max(90 * f * f, 1.5))
    n_spindle = int(rng.uniform(0.1, 0.4) * (tissue * col["stroma"]).sum() / max(400 * f * f, 6))
    clusters = np.exp(0.8 * smooth_noise((size, size), 30 * f + 2, rng))  # nests of crowded cells
    kernels = _disk_kernels(f, rng)
    impulses = [np.zeros((size, size), np.float32) for _ in kernels]
    for pts, kinds in (
        (sample_points(cellular**2 * clusters, n_cell, rng), rng.integers(0, 4, n_cell)),
        (sample_points(tissue * col["stroma"], n_spindle, rng), None),
    ):
        if len(pts) == 0:
            continue
        idx = np.clip(np.round(pts).astype(int), 0, size - 1)
        if kinds is None:  # spindle nuclei lie along the local fibre direction
            ang = col["theta"][idx[:, 0], idx[:, 1]] % np.pi
            kinds = 4 + np.round(ang / (np.pi / 4)).astype(int) % 4
        amp = rng.uniform(0.6, 1.2, len(idx))
        for k in range(len(kernels)):
            sel = kinds == k
            np.add.at(impulses[k], (idx[sel, 0], idx[sel, 1]), amp[sel])
    nuclei = sum(fftconvolve(imp, ker, mode="same") for imp, ker in zip(impulses, kernels) if imp.any())
    nuclei = np.zeros((size, size)) if np.isscalar(nuclei) else nuclei
    chromatin = 1 + 0.7 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 0.4 * f + 0.3)  # grainy
    params.update(n_nuclei=int(n_cell + n_spindle), nuclei_richness=float(richness))
    return (np.clip(nuclei, 0, 1.5) * chromatin).astype(np.float32)


def _fat(size: int, f: float, tissue: np.ndarray, rng: np.random.Generator, params: dict) -> tuple[np.ndarray, ...]:
    """Adipocyte region: (vacuole interior (H, W) in [0, 1], thin membrane (H, W) in [0, 1]); empty in most cores."""
    empty = np.zeros((size, size), np.float32)
    if rng.random() > 0.3:
        params.update(fat=0.0)
        return empty, empty
    region = smooth_noise((size, size), 80 * f + 3, rng) > rng.uniform(0.5, 1.3)
    region = ndimage.gaussian_filter(region.astype(np.float32), 4 * f + 1) * tissue > 0.5
    if not region.any():
        params.update(fat=0.0)
        return empty, empty
    cell = rng.uniform(18, 35) * f + 3  # vacuole diameter, px
    n = max(int(region.sum() / cell**2 * 1.3), 1)
    seeds = sample_points(region.astype(np.float32), n, rng)
    # distances to the nearest and second-nearest seed: membranes where they are nearly equal (Voronoi edges)
    pix = np.argwhere(region)
    dist, _ = cKDTree(seeds).query(pix, k=2)
    gap = np.full((size, size), 1e3, np.float32)
    gap[pix[:, 0], pix[:, 1]] = dist[:, 1] - dist[:, 0]
    membrane = np.clip(1.5 - gap / (0.8 * f + 0.5), 0, 1) * region
    interior = region * (1 - membrane)
    params.update(fat=float(region.mean()))
    return ndimage.gaussian_filter(interior.astype(np.float32), 0.5), membrane.astype(np.float32)


def _render_bf(tissue, col, nuclei, fat_in, fat_mem, f, rng, params) -> np.ndarray:
    """Beer-Lambert H&E under a per-image illuminant. Returns (3, H, W) uint8."""
    size = tissue.shape[0]
    h_vec = np.clip(_HEMATOXYLIN + rng.normal(0, 0.05, 3), 0.05, None)
    e_vec = np.clip(_EOSIN + rng.normal(0, 0.05, 3), 0.05, None)
    h_vec, e_vec = h_vec / np.linalg.norm(h_vec), e_vec / np.linalg.norm(e_vec)
    h_strength, e_strength = rng.uniform(0.6, 1.4), rng.uniform(0.75, 1.5)
    solid = tissue * np.clip(1 - fat_in - fat_mem, 0, 1)  # fat: white vacuoles in thin pink membranes
    pale = np.exp(0.35 * smooth_noise(tissue.shape, 50 * f + 2, rng) - 0.1)  # loose vs dense stroma
    cellular = 1 - col["stroma"]
    fibres = col["bf"] / (np.quantile(col["bf"][tissue > 0.5], 0.95) + 1e-6) if (tissue > 0.5).any() else col["bf"]
    # eosin stains stroma, every fibre (seen or not by SHG) and cytoplasm alike; hematoxylin the cellular areas
    eosin = solid * pale * (0.30 + 0.06 * col["stroma"] + 0.05 * cellular + 0.55 * np.clip(fibres, 0, 2))
    eosin *= 1 + 0.12 * smooth_noise(tissue.shape, 3 * f + 1, rng)  # fine grain of the stain
    eosin += 0.35 * fat_mem * tissue
    hema = solid * (0.03 + 0.14 * cellular) * pale + 0.85 * nuclei * solid
    eosin = np.clip(eosin * e_strength, 0, None)
    hema = np.clip(hema * h_strength, 0, None)
    od = hema[None] * h_vec[:, None, None] + eosin[None] * e_vec[:, None, None]
    # illuminant: near white, sometimes grey-blue; mild vignetting
    if rng.random() < 0.15:
        light = np.array([0.52, 0.56, 0.60]) * 255 + rng.uniform(0, 60) + rng.normal(0, 4, 3)
    else:
        light = np.array([244.0, 243.0, 244.0]) + rng.normal(0, 3, 3)
    gi, gj = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    vignette = 1 - rng.uniform(0, 0.06) * (gi**2 + gj**2) * 2
    rgb = light[:, None, None] * vignette[None] * np.exp(-od)
    rgb = ndimage.gaussian_filter(rgb, (0, 0.6 * f + 0.3, 0.6 * f + 0.3))
    rgb += rng.normal(0, rng.uniform(1.0, 3.0), rgb.shape)
    params.update(h_strength=float(h_strength), e_strength=float(e_strength), bf_light=light.round(1).tolist())
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


_EMPTY_COVERAGE = (0.4, 0.6)
_DECOUPLED_MAX_STROMA = 0.75  # fraction of the image an empty core's SHG patches cover


def _render_shg(tissue, col, nuclei, fat_in, f, rng, params, faint: bool = False) -> np.ndarray:
    """Collagen-only signal through a noisy detector with a 1-2 count offset. Returns (1, H, W) uint8.

    Sparse bright fibres (gain set so the image's 99th percentile hits a drawn target, ~100 counts) over a faint
    diffuse glow of the stroma (a fraction of a count to ~1.5): most tissue pixels stay at 1-4 counts, as in real SHG.
    ``faint``: the dim end of the real range (99th percentile 14-30 counts, stroma glow 1-2.5): most pixels 1-7.
    """
    solid = tissue * np.clip(1 - fat_in, 0, 1)
    fib = col["shg"] * solid * np.clip(1 - nuclei, 0, 1)
    focus = np.exp(0.35 * smooth_noise(tissue.shape, 200 * f + 4, rng))  # uneven depth / focus across the core
    signal = fib * focus
    empty_core = rng.random() < 0.1  # some cores show almost no SHG and a clean-zero background
    p99_target = float(np.clip(np.exp(rng.normal(np.log(105), 0.5)), 14, 252))
    glow = rng.uniform(0.3, 1.5)
    if faint:
        p99_target, glow = rng.uniform(14, 30), rng.uniform(1.0, 2.5)
    if empty_core:
        p99_target, glow = rng.uniform(10, 40), 0.0
        # faint patches over part of the core: even the emptiest real cores show signal over >= 15 % of the image
        # (spec: footprint 0.15-0.81), which patches above a fixed noise level (5-12 %) fell short of
        patches = smooth_noise(signal.shape, 40 * f + 2, rng)
        inside = patches[tissue > 0.5]
        share = rng.uniform(*_EMPTY_COVERAGE) * patches.size / max(inside.size, 1)  # of the image, not the core
        level = np.quantile(inside, max(0.0, 1 - share)) if inside.size else np.inf
        signal = signal * (patches > level)
    # gain sets the 99th percentile over the whole image (as the statistic is taken), background included
    counts = signal * (p99_target / max(float(np.quantile(signal, 0.99)), 1e-6))
    counts += glow * focus * ndimage.gaussian_filter(solid * (0.3 + 0.7 * col["stroma"]), 3 * f + 1)
    knee = 150.0  # the detector compresses the brightest bundles: saturation stays rare
    counts = np.where(counts > knee, knee + (255 - knee) * np.tanh((counts - knee) / (255 - knee)), counts)
    offset = rng.uniform(0.0, 0.5) if empty_core else rng.uniform(0.9, 1.8)
    counts = ndimage.gaussian_filter(counts, 0.4 * f + 0.2)  # optics first, then the detector's noise
    shot = rng.uniform(0.8, 1.5)
    noisy = counts + offset + shot * np.sqrt(counts + 0.3) * rng.standard_normal(counts.shape)
    params.update(shg_p99_target=p99_target, shg_offset=float(offset), shg_glow=float(glow), empty_core=empty_core)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)[None]


def make_aligned_pair(
    size: int,
    rng: np.random.Generator,
    *,
    length_scale: float | None = None,
    independent_texture: bool = False,
    faint: bool = False,
) -> tuple[np.ndarray, np.ndarray, TissueInfo]:
    """Render one synthetic TMA core in both modalities, perfectly aligned.

    Args:
        size: image side, pixels (challenge: 834; at least 32).
        rng: the generator every random choice is drawn from (same state, same images).
        length_scale: pixels per pixel of an 834 px image (fibre widths, texture scales); ``size / 834`` when None.
            A larger field of view at the scale of a smaller image (``patch`` regimes) passes that image's scale.
        independent_texture: the SHG's fibres are drawn anew in the same stroma (coarse layout shared, fine
            texture independent of the bright field's); the draws for the default (False) are unchanged.
        faint: SHG at the dim end of the real range (see :func:`_render_shg`).

    Returns:
        shg (1, H, W) uint8, bf (3, H, W) uint8 RGB, and a :class:`TissueInfo` on the same grid.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    f = size / REFERENCE_SIZE if length_scale is None else length_scale
    params: dict = {}
    tissue = _core_mask(size, f, rng, params)
    # decoupled cores show a layout to match (stroma beside cellular regions, as the held-out real ones do)
    col = collagen(size, f, tissue, rng, params, max_stroma=_DECOUPLED_MAX_STROMA if independent_texture else 0.95)
    nuclei = _nuclei(size, f, tissue, col, rng, params)
    fat_in, fat_mem = _fat(size, f, tissue, rng, params)
    bf = _render_bf(tissue, col, nuclei, fat_in, fat_mem, f, rng, params)
    seen = col
    if independent_texture:  # drawn after the bright field: the default pairs' draws are unchanged
        seen = {**col, "shg": independent_shg_fibres(size, f, tissue, col, rng)}
        params.update(independent_texture=True)
    if faint:
        params.update(faint=True)
    shg = _render_shg(tissue, seen, nuclei, fat_in, f, rng, params, faint=faint)
    solid = tissue * np.clip(1 - fat_in, 0, 1)  # stained tissue: fat vacuoles are as empty as the background
    landmark_map = ndimage.gaussian_filter(col["shg"] * solid, 1.5 * f + 0.8)
    landmark_map = landmark_map / (landmark_map.max() + 1e-6) + 0.5 * ndimage.gaussian_filter(nuclei * solid, f + 0.5)
    info = TissueInfo(tissue=solid.astype(np.float32), landmark_map=landmark_map.astype(np.float32), params=params)
    return shg, bf, info
