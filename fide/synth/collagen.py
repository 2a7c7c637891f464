"""Collagen of the synthetic tissue: stroma, fibres traced along an orientation field, and what SHG and eosin see
of them (:func:`collagen`), or SHG fibres drawn anew in the same stroma (:func:`independent_shg_fibres`).

Lengths are pixels at 834 px scaled by ``f = size / 834`` (fibres ~2 px wide at 834); array order (i, j).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .random_fields import sample_points, smooth_noise

__all__ = ["collagen", "independent_shg_fibres"]


def _trace_fibres(
    seeds: np.ndarray,
    lengths: np.ndarray,
    follow: np.ndarray,
    theta: np.ndarray,
    f: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Follow the orientation field from each seed, with a per-fibre crimp (waviness).

    Args:
        seeds: (N, 2) start points, pixels, array order.
        lengths: (N,) fibre lengths, pixels.
        follow: (N,) in [0, 1]: how much each fibre follows the field (1) rather than its own random course (0).
        theta: (H, W) orientation field, radians (mod pi), angle from axis 0 towards axis 1.

    Returns:
        points (N, S, 2), weights (N, S) (1 on the fibre, 0 past its length), angle (N, S) of the local direction.
    """
    step = 1.0
    n_steps = int(np.ceil(lengths.max() / step)) + 1
    cos2, sin2 = np.cos(2 * theta), np.sin(2 * theta)  # doubled angles: sign-free interpolation
    n = len(seeds)
    crimp_amp = rng.uniform(0.2, 0.7, n)
    crimp_freq = 2 * np.pi / (rng.uniform(10, 30, n) * f + 3)
    crimp_phase = rng.uniform(0, 2 * np.pi, n)
    jitter = rng.normal(0, 0.3, n)  # fibres deviate from the bundle direction
    own = rng.uniform(0, np.pi, n)
    own_c2, own_s2 = (1 - follow) * np.cos(2 * own), (1 - follow) * np.sin(2 * own)
    points = np.zeros((n, n_steps, 2), np.float32)
    angles = np.zeros((n, n_steps), np.float32)
    # longest fibres first: at step s only the first `active` fibres are still growing (saves the short ones' steps)
    order = np.argsort(-lengths, kind="stable")
    follow, own_c2, own_s2, jitter = follow[order], own_c2[order], own_s2[order], jitter[order]
    crimp_amp, crimp_freq, crimp_phase = crimp_amp[order], crimp_freq[order], crimp_phase[order]
    remaining = lengths[order]
    pos = seeds[order].astype(np.float64)
    heading = np.where(rng.random(n) < 0.5, -1.0, 1.0)[:, None]
    prev = None
    for s in range(n_steps):
        active = int(np.count_nonzero(remaining > s * step))
        if active == 0:
            break
        pos, heading = pos[:active], heading[:active]
        ij = np.clip(np.rint(pos).astype(np.int64), 0, np.array(theta.shape) - 1)  # the field is smooth: nearest
        c2, s2 = cos2[ij[:, 0], ij[:, 1]], sin2[ij[:, 0], ij[:, 1]]
        ang = 0.5 * np.arctan2(follow[:active] * s2 + own_s2[:active], follow[:active] * c2 + own_c2[:active])
        ang = ang + jitter[:active] + crimp_amp[:active] * np.sin(crimp_freq[:active] * s * step + crimp_phase[:active])
        direction = np.stack([np.cos(ang), np.sin(ang)], 1)
        if prev is None:
            direction *= heading
        else:
            direction *= np.where((direction * prev[:active]).sum(1) < 0, -1.0, 1.0)[:, None]  # keep heading
        points[order[:active], s], angles[order[:active], s] = pos, ang
        pos = pos + step * direction
        prev = direction
    weights = (np.arange(n_steps)[None, :] * step < lengths[:, None]).astype(np.float32) * step
    return points, weights, angles


def _splat(points: np.ndarray, weights: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Bilinear splat of points (..., 2) into (size, size) images, one per weight array (...,); zero weights skipped."""
    keep = np.any([w.reshape(-1) != 0 for w in weights], axis=0)
    p = points.reshape(-1, 2)[keep]
    ws = [w.reshape(-1)[keep] for w in weights]
    base = np.floor(p).astype(np.int64)
    frac = p - base
    outs = [np.zeros(size * size, np.float64) for _ in ws]
    for di in (0, 1):
        for dj in (0, 1):
            i, j = base[:, 0] + di, base[:, 1] + dj
            corner = (frac[:, 0] if di else 1 - frac[:, 0]) * (frac[:, 1] if dj else 1 - frac[:, 1])
            ok = (i >= 0) & (i < size) & (j >= 0) & (j < size)
            flat = i[ok] * size + j[ok]
            for out, w in zip(outs, ws):
                out += np.bincount(flat, (w * corner)[ok], minlength=size * size)
    return [out.reshape(size, size).astype(np.float32) for out in outs]


def collagen(
    size: int, f: float, tissue: np.ndarray, rng: np.random.Generator, params: dict, max_stroma: float = 0.95
) -> dict:
    """Stroma density and fibre images: what SHG sees and what eosin stains. Returns a dict of (H, W) float32.

    ``max_stroma``: the largest share of the core that is stroma (the same draw, rescaled).
    """
    shape = (size, size)
    stroma_frac = rng.uniform(0.4, max_stroma)  # share of the core that is collagen-rich stroma
    raw = smooth_noise(shape, rng.uniform(40, 110) * f + 3, rng)
    threshold = np.quantile(raw[tissue > 0.5], 1 - stroma_frac) if (tissue > 0.5).any() else 0.0
    stroma = 1 / (1 + np.exp(-(raw - threshold) * 4))
    # orientation: smooth field with occasional sharper bundle boundaries
    theta = 0.45 * np.pi * smooth_noise(shape, rng.uniform(30, 90) * f + 3, rng) + rng.uniform(0, np.pi)
    theta += 0.5 * np.pi * np.tanh(2 * smooth_noise(shape, 150 * f + 3, rng))  # bundle domains
    area = float((tissue * stroma).sum())
    n_fibres = int(rng.uniform(2.0, 3.8) * area / max(175 * f * f, 3)) + 10  # a fibre covers ~70 x 2.5 px
    lengths = np.exp(np.clip(rng.normal(0, 0.5, n_fibres), -1.5, 1.0)) * (70 * f + 4)
    short = rng.random(n_fibres) < rng.uniform(0.3, 0.6)  # fibres cut across by the section: dots, dashes
    lengths[short] = rng.uniform(3, 10, short.sum()) * f + 1
    density = tissue * (0.15 + stroma**2)  # fibres mostly in stroma, a few everywhere
    seeds = sample_points(density, n_fibres, rng)
    n_bundled = n_fibres // 3  # a third of the fibres run beside a neighbour: bundles
    if n_bundled and len(seeds):
        parent = rng.integers(0, n_fibres - n_bundled, n_bundled)
        seeds[n_fibres - n_bundled :] = seeds[parent] + rng.normal(0, 3.5 * f + 0.5, (n_bundled, 2))
        lengths[n_fibres - n_bundled :] = lengths[parent] * rng.uniform(0.6, 1.2, n_bundled)
    # a meshwork share of fibres runs its own course: crossings keep the texture only moderately oriented
    follow = np.where(rng.random(n_fibres) < rng.uniform(0.5, 0.9), rng.uniform(0, 0.3, n_fibres), 1.0)
    if n_bundled:
        follow[n_fibres - n_bundled :] = follow[parent]
    points, weights, angles = _trace_fibres(seeds, lengths, follow, theta, f, rng)
    # per-fibre brightness: SHG efficiency (some fibres invisible) and eosin uptake, only loosely related
    log_base = rng.normal(0, 1.0, n_fibres)
    shg_gain = np.exp(log_base + rng.normal(0, 0.8, n_fibres)) * (rng.random(n_fibres) > rng.uniform(0.1, 0.4))
    bf_gain = np.exp(0.6 * log_base + rng.normal(0, 0.3, n_fibres))
    pol = rng.uniform(0, np.pi)  # laser polarisation: SHG ~ a + b cos^2(fibre angle - pol)
    pol_depth = rng.uniform(0.3, 0.8)
    shg_w = weights * shg_gain[:, None] * (1 - pol_depth + pol_depth * np.cos(angles - pol) ** 2)
    width = 0.75 * f + 0.35  # gaussian sigma: ~2 px wide fibres at 834
    shg_line, bf_line = _splat(points, [shg_w, weights * bf_gain[:, None]], size)
    shg_fib = ndimage.gaussian_filter(shg_line, width)
    bf_fib = ndimage.gaussian_filter(bf_line, width * 1.7)  # BF: lower resolution, bundles not fibrils
    params.update(stroma_frac=float(stroma_frac), n_fibres=int(n_fibres))
    return {"stroma": stroma.astype(np.float32), "shg": shg_fib, "bf": bf_fib, "theta": theta}


def independent_shg_fibres(size: int, f: float, tissue: np.ndarray, col: dict, rng: np.random.Generator) -> np.ndarray:
    """SHG fibres drawn anew in the same stroma (H, W): the coarse layout agrees with the bright field, the fine
    texture does not (held-out real cores whose fibre-texture NCC at the true pose is ~0, shg-bf-appearance.md).

    Real causes: SHG sees fibrils the H&E section does not resolve, a different focal plane, or a neighbouring
    section. Fibres follow a new orientation field from new seeds, with the stroma density of ``col``.
    """
    shape = (size, size)
    theta = 0.45 * np.pi * smooth_noise(shape, rng.uniform(30, 90) * f + 3, rng) + rng.uniform(0, np.pi)
    area = float((tissue * col["stroma"]).sum())
    n_fibres = int(rng.uniform(2.0, 3.8) * area / max(175 * f * f, 3)) + 10
    lengths = np.exp(np.clip(rng.normal(0, 0.5, n_fibres), -1.5, 1.0)) * (50 * f + 4)
    seeds = sample_points(tissue * (0.05 + col["stroma"] ** 2), n_fibres, rng)
    follow = rng.uniform(0.3, 1.0, n_fibres)
    points, weights, angles = _trace_fibres(seeds, lengths, follow, theta, f, rng)
    gain = np.exp(rng.normal(0, 0.9, n_fibres)) * (rng.random(n_fibres) > 0.2)
    (line,) = _splat(points, [weights * gain[:, None]], size)
    # collagen exists in the stroma only: fibres traced past its edge stop there, so the layout stays as in H&E
    return ndimage.gaussian_filter(line, 0.75 * f + 0.35) * col["stroma"]
