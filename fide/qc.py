"""Quality-control pictures: one PNG per pair and a summary page, so a person sees at a glance what failed.

Per pair (:func:`qc_figure`), two rows on the fixed grid:

* fixed (SHG, log + percentile stretch) with its landmarks; moving (RGB) with its landmarks and the fixed landmarks
  mapped through the field; the warped moving image;
* colour overlays, fixed in green over the moving tissue in magenta (bright-field inverted, so tissue is bright),
  before (moving sampled on the fixed grid, zero field) and after registration, and a checkerboard after.

Grey means the two agree; green or magenta fringes mean misalignment. The summary (:func:`qc_summary`) shows the
status of every pair, the TRE distribution when landmarks exist, and lists the failed and flagged pairs with their
reasons. :class:`QCRecorder` plugs both into :func:`fide.runner.register_pairs` (``fide register --qc``).
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from fide import geometry  # noqa: E402
from fide.config import ConfidenceConfig  # noqa: E402
from fide.io import DatasetError, Pair, read_disp, read_image, read_landmark_pair, read_spacing  # noqa: E402
from fide.warp_points import warp_points  # noqa: E402

__all__ = ["qc_figure", "qc_summary", "pair_tre", "QCRecorder", "DISPLAY_PX"]

logger = logging.getLogger(__name__)

DISPLAY_PX = 512  # longest side of the pictures' panels; larger images are downsampled for display only
_STATUS_COLOURS = {"ok": "tab:green", "flagged": "tab:orange", "failed": "tab:red", "skipped": "tab:grey"}


def _stretch_fixed(fixed: torch.Tensor) -> np.ndarray:
    """(1, 1, H, W) SHG → (H, W) in [0, 1]: log(1 + x), then the 1st–99.5th percentile range."""
    values = torch.log1p(fixed[0].float().clamp(min=0)).mean(0).numpy()
    low, high = np.percentile(values, [1.0, 99.5])
    return np.clip((values - low) / max(high - low, 1e-6), 0, 1)


def _rgb(moving: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) raw bright field → (H, W, 3) in [0, 1] (8-bit range assumed, brighter images rescaled)."""
    image = moving[0].float()
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    top = max(float(image.max()), 255.0)
    return (image / top).clamp(0, 1).permute(1, 2, 0).numpy()


def _tissue(rgb: np.ndarray) -> np.ndarray:
    """Inverted luminance of an (H, W, 3) bright-field image: tissue bright, white background dark, in [0, 1]."""
    grey = 1 - rgb @ np.array([0.299, 0.587, 0.114])
    low, high = np.percentile(grey, [1.0, 99.5])
    return np.clip((grey - low) / max(high - low, 1e-6), 0, 1)


def _overlay(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Green = fixed, magenta = moving; both (H, W) in [0, 1] → (H, W, 3)."""
    return np.stack([0.8 * moving, fixed, 0.8 * moving], axis=-1)


def _checkerboard(fixed: np.ndarray, moving: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate ``tiles`` x ``tiles`` squares of two (H, W, 3) images."""
    rows = (np.arange(fixed.shape[0]) * tiles // fixed.shape[0])[:, None]
    cols = (np.arange(fixed.shape[1]) * tiles // fixed.shape[1])[None, :]
    return np.where(((rows + cols) % 2 == 0)[..., None], fixed, moving)


def _warp_display(moving: torch.Tensor, disp: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Warped (H, W, 3) RGB, white outside the moving image, and the (H, W) inside mask."""
    inside = geometry.warp(torch.ones_like(moving[:, :1]), disp)[0, 0].numpy() > 0.5
    return np.where(inside[..., None], _rgb(geometry.warp(moving, disp)), 1.0), inside


def _display_shape(shape: Sequence[int], max_px: int) -> tuple[int, int]:
    factor = min(1.0, max_px / max(shape))
    return max(2, round(shape[0] * factor)), max(2, round(shape[1] * factor))


def _shrink(image: torch.Tensor, max_px: int) -> torch.Tensor:
    shape = _display_shape(image.shape[-2:], max_px)
    return image if tuple(shape) == tuple(image.shape[-2:]) else geometry.downsample(image, shape)


def _as_batch(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    image = torch.as_tensor(image).float()
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W) or (H, W), got {tuple(image.shape)}")
    return image[None]


def qc_figure(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    disp: torch.Tensor,
    out_png: str | Path,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
    *,
    failed: bool = False,
    max_px: int = DISPLAY_PX,
) -> Path:
    """Draw one pair's QC picture.

    Args:
        fixed: (1, H, W) raw SHG (or (C, H, W); channels are averaged).
        moving: (3, Hm, Wm) raw RGB bright field (0–255), or (1, Hm, Wm).
        disp: (2, H, W) or (1, 2, H, W) displacement on the fixed grid, pixels, array order, fixed to moving.
        out_png: destination PNG (folders created).
        landmarks: ``(fixed_points, moving_points)``, each (N, 2) pixels, array order, row n ↔ row n.
        title: first line of the figure title (e.g. pair name, NMI and TRE).
        failed: draw the title in red (the pair failed or was flagged).
        max_px: longest side of the displayed panels; images are downsampled for display only.

    Returns:
        ``out_png``.
    """
    fixed_b, moving_b = _as_batch(fixed), _as_batch(moving)
    disp = torch.as_tensor(disp).float()
    disp = disp[None] if disp.ndim == 3 else disp
    if disp.ndim != 4 or disp.shape[:2] != (1, 2) or tuple(disp.shape[2:]) != tuple(fixed_b.shape[2:]):
        raise ValueError(f"disp must be (1, 2, {fixed_b.shape[2]}, {fixed_b.shape[3]}), got {tuple(disp.shape)}")
    fixed_small, moving_small = _shrink(fixed_b, max_px), _shrink(moving_b, max_px)
    moving_factors = geometry.scale_factors(moving_b.shape[2:], moving_small.shape[2:])
    fixed_factors = geometry.scale_factors(fixed_b.shape[2:], fixed_small.shape[2:])
    disp_small = geometry.resize_disp(disp, fixed_small.shape[2:], moving_factors)  # display grids, both images
    # the zero field of the full grids, expressed between the display grids ("moving resampled on the fixed grid")
    ratio = [m / f for m, f in zip(moving_factors, fixed_factors)]
    zero_small = geometry.resize_disp(torch.zeros_like(disp_small), fixed_small.shape[2:], ratio)
    before_rgb, before_inside = _warp_display(moving_small, zero_small)
    after_rgb, after_inside = _warp_display(moving_small, disp_small)
    shg, mov_rgb = _stretch_fixed(fixed_small), _rgb(moving_small)
    before_t, after_t = _tissue(before_rgb) * before_inside, _tissue(after_rgb) * after_inside

    fig, axes = plt.subplots(2, 3, figsize=(13.5, 9.2), constrained_layout=True)
    panels = [
        (shg, "fixed (SHG, log stretch)", "gray"),
        (mov_rgb, "moving (bright field)", None),
        (after_rgb, "warped moving", None),
        (_overlay(shg, before_t), "before: fixed green / moving magenta", None),
        (_overlay(shg, after_t), "after: fixed green / warped magenta", None),
        (_checkerboard(np.repeat(shg[..., None], 3, -1), after_rgb), "after: checkerboard SHG / warped", None),
    ]
    for ax, (image, label, cmap) in zip(axes.flat, panels):
        ax.imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if landmarks is not None:
        _draw_landmarks(axes, landmarks, disp, fixed_b.shape[2:], fixed_small.shape[2:], moving_factors)
    colour = "tab:red" if failed else "black"
    fig.suptitle(title, fontsize=12, color=colour, fontweight="bold" if failed else "normal")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=72)
    plt.close(fig)
    return out_png


def _draw_landmarks(axes, landmarks, disp, fixed_shape, fixed_small_shape, moving_factors) -> None:
    """Fixed points on the fixed panel; moving points (o) and mapped fixed points (x) joined on the moving panel."""
    fixed_pts, moving_pts = (np.asarray(p, dtype=np.float64) for p in landmarks)
    mapped = warp_points(fixed_pts, disp)
    fixed_factor = np.asarray(geometry.scale_factors(fixed_shape, fixed_small_shape))
    moving_factor = np.asarray(moving_factors)
    f, m, q = fixed_pts * fixed_factor, moving_pts * moving_factor, mapped * moving_factor
    axes[0, 0].scatter(f[:, 1], f[:, 0], s=18, marker="+", c="yellow", linewidths=1)  # imshow: x = column = axis 1
    ax = axes[0, 1]
    ax.scatter(m[:, 1], m[:, 0], s=22, facecolors="none", edgecolors="tab:blue", label="moving landmarks")
    ax.scatter(q[:, 1], q[:, 0], s=22, marker="x", c="tab:red", label="fixed landmarks mapped")
    for start, end in zip(m, q):
        ax.plot([start[1], end[1]], [start[0], end[0]], color="tab:red", linewidth=0.8)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.8)


def pair_tre(pair: Pair, disp: torch.Tensor) -> np.ndarray | None:
    """Per-landmark TRE of a pair under ``disp``, or None when the pair has no landmark CSVs.

    ``‖(f + u(f) − m) ⊙ s_moving‖`` with the moving image's header spacing, as the challenge's evaluator; ``u`` is
    interpolated bilinearly here (the evaluator: cubic spline), a difference of hundredths of a pixel on smooth
    fields.

    Args:
        pair: the pair (its landmark CSVs are found by the Learn2Reg rule).
        disp: (2, H, W) or (1, 2, H, W) displacement, pixels, fixed to moving.
    """
    fixed_csv, moving_csv = pair.landmarks()
    if not (fixed_csv.is_file() and moving_csv.is_file()):
        return None
    fixed_pts, moving_pts = read_landmark_pair(fixed_csv, moving_csv)
    spacing = np.asarray(read_spacing(pair.moving))
    return np.linalg.norm((warp_points(fixed_pts, disp) - moving_pts) * spacing, axis=1)


def qc_summary(results_df: pd.DataFrame, tre_per_pair: Mapping[str, float], out_png: str | Path) -> Path:
    """Summary page: status counts, per-pair TRE (when landmarks exist) and the list of failed / flagged pairs.

    Args:
        results_df: the runner's table (columns ``pair, status, seconds, quality, message``).
        tre_per_pair: pair name → mean TRE (moving header units, pixels for the challenge); may be empty.
        out_png: destination PNG.

    Returns:
        ``out_png``.
    """
    missing = {"pair", "status"} - set(results_df.columns)
    if missing:
        raise ValueError(f"results_df must have columns pair and status, missing {sorted(missing)}")
    table = results_df.reset_index(drop=True)
    tre = {name: float(value) for name, value in tre_per_pair.items() if value == value}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), constrained_layout=True, gridspec_kw={"width_ratios": [1, 2, 2]})
    counts = table["status"].value_counts()
    names = [s for s in _STATUS_COLOURS if s in counts] + [s for s in counts.index if s not in _STATUS_COLOURS]
    axes[0].bar(names, [counts[s] for s in names], color=[_STATUS_COLOURS.get(s, "tab:purple") for s in names])
    axes[0].set_title(f"{len(table)} pairs by status")

    ax = axes[1]
    if tre:
        order = sorted(tre, key=tre.get)
        status = dict(zip(table["pair"], table["status"]))
        colours = [_STATUS_COLOURS.get(status.get(name, "ok"), "tab:purple") for name in order]
        ax.barh(range(len(order)), [tre[n] for n in order], color=colours)
        ax.set_yticks(range(len(order)), order, fontsize=max(4, min(9, 400 // max(len(order), 1))))
        ax.axvline(2.0, color="black", linestyle="--", linewidth=1, label="2 px")
        values = np.array([tre[n] for n in order])
        ax.set_title(
            f"mean TRE per pair: mean {values.mean():.2f}, median {np.median(values):.2f}, "
            f"{int((values < 2).sum())}/{len(values)} under 2"
        )
        ax.set_xlabel("TRE (moving header units; pixels when spacing is 1)")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no landmarks: no TRE", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()

    problems = table[table["status"].isin(["failed", "flagged"])]
    lines = [f"{r.pair}  {r.status.upper()}  {str(getattr(r, 'message', ''))[:70]}" for r in problems.itertuples()]
    axes[2].set_axis_off()
    axes[2].set_title("failed / flagged pairs" if lines else "no failed or flagged pairs")
    shown = lines[:40] + ([f"... and {len(lines) - 40} more"] if len(lines) > 40 else [])
    axes[2].text(0, 1, "\n".join(shown), va="top", ha="left", family="monospace", fontsize=8, color="tab:red")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


class QCRecorder:
    """``on_result`` callback of :func:`fide.runner.register_pairs` that draws the QC pictures.

    Examples::

        >>> recorder = QCRecorder("out/qc")                                       # doctest: +SKIP
        >>> table = register_pairs(pairs, "out", cfg, on_result=recorder)         # doctest: +SKIP
        >>> recorder.finish(pairs, table, "out")                                  # doctest: +SKIP
        PosixPath('out/qc/summary.png')

    Args:
        folder: where ``<pair>.png``, ``summary.png`` and ``index.html`` go.
        flag_below: confidence below which a pair's title is drawn in red (the runner's flag).
        max_px: longest side of the displayed panels.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        flag_below: float = ConfidenceConfig.flag_below,
        max_px: int = DISPLAY_PX,
    ) -> None:
        if max_px < 16:
            raise ValueError(f"max_px must be >= 16, got {max_px}")
        self.folder = Path(folder)
        self.flag_below = flag_below
        self.max_px = max_px
        self.tre: dict[str, float] = {}

    def png_path(self, pair: Pair) -> Path:
        return self.folder / f"{pair.disp_name.removesuffix('.nii.gz')}.png"

    def __call__(self, pair: Pair, result, status: str = "", message: str = "") -> Path:
        """Draw ``pair`` under ``result.disp`` (any object with a (1, 2, H, W) ``disp``, a ``quality`` and a
        ``confidence``)."""
        disp = result.disp.detach().cpu().float()
        tre = pair_tre(pair, disp)
        landmarks = read_landmark_pair(*pair.landmarks()) if tre is not None else None
        if tre is not None:
            self.tre[pair.name] = float(tre.mean())
        quality = float(getattr(result, "quality", math.nan))
        confidence = float(getattr(result, "confidence", math.nan))
        bad = status in ("failed", "flagged") or (confidence == confidence and confidence < self.flag_below)
        status = status or ("flagged" if bad else "ok")
        words = [pair.name, status.upper()]
        if quality == quality:
            words.append(f"NMI {quality:.3f}")
        if confidence == confidence:
            words.append(f"confidence {confidence:.2f}")
        if tre is not None:
            words.append(f"TRE mean {tre.mean():.2f}, max {tre.max():.2f}")
        title = "   ".join(words) + (f"\n{message}" if message else "")
        fixed, moving = read_image(pair.fixed), read_image(pair.moving)
        return qc_figure(fixed, moving, disp, self.png_path(pair), landmarks, title, failed=bad, max_px=self.max_px)

    def finish(
        self, pairs: Sequence[Pair], table: pd.DataFrame, output: str | Path, shard: tuple[int, int] | None = None
    ) -> Path:
        """Pictures for pairs not drawn yet (failed or kept), TRE from the written fields, summary and index.

        Args:
            pairs: the pairs of ``table``.
            table: the runner's results table.
            output: the folder holding the written ``disp_*.nii.gz``.
            shard: ``(I, N)`` names the files ``summary.shard-I-of-N.png`` / ``index.shard-I-of-N.html``.

        Returns:
            The summary PNG.
        """
        rows = {row.pair: row for row in table.itertuples(index=False)}
        for pair in pairs:
            row = rows.get(pair.name)
            field_path = Path(output) / pair.disp_name
            if row is None or not field_path.is_file():
                continue
            drawn = self.png_path(pair).is_file() and row.status != "failed"
            if pair.name in self.tre and drawn:
                continue
            try:
                disp = read_disp(field_path)
                if not drawn:
                    quality = float(row.quality) if row.quality == row.quality else math.nan
                    result = _Stored(disp[None], quality)
                    self(pair, result, status=row.status, message=str(row.message or ""))
                else:
                    tre = pair_tre(pair, disp)
                    if tre is not None:
                        self.tre[pair.name] = float(tre.mean())
            except (DatasetError, OSError, RuntimeError, ValueError) as err:
                logger.warning("%s: no QC picture (%s)", pair.name, str(err).splitlines()[0])
        suffix = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
        summary = qc_summary(table, self.tre, self.folder / f"summary{suffix}.png")
        self._write_index(pairs, table, self.folder / f"index{suffix}.html", summary.name)
        return summary

    def _write_index(self, pairs: Sequence[Pair], table: pd.DataFrame, path: Path, summary_name: str) -> None:
        """A small HTML page: the summary, then one table row per pair linking its picture."""
        by_name = {p.name: p for p in pairs}
        cells = []
        for row in table.itertuples(index=False):
            pair = by_name.get(row.pair)
            png = self.png_path(pair).name if pair is not None and self.png_path(pair).is_file() else ""
            tre = self.tre.get(row.pair, math.nan)
            colour = _STATUS_COLOURS.get(row.status, "purple").removeprefix("tab:")
            link = f'<a href="{html.escape(png)}">{html.escape(row.pair)}</a>' if png else html.escape(row.pair)
            cells.append(
                f"<tr><td>{link}</td><td style='color:{colour}'>{html.escape(row.status)}</td>"
                f"<td>{tre:.2f}</td><td>{row.quality:.3f}</td><td>{row.seconds:.1f}</td>"
                f"<td>{html.escape(str(row.message or ''))}</td></tr>"
            )
        path.write_text(
            "<!doctype html><meta charset='utf-8'><title>fide QC</title>"
            f"<img src='{html.escape(summary_name)}' style='max-width:100%'>"
            "<table border=1 cellpadding=3><tr><th>pair</th><th>status</th><th>mean TRE</th><th>NMI</th>"
            "<th>seconds</th><th>message</th></tr>" + "\n".join(cells) + "</table>\n"
        )


class _Stored:
    """A field read back from disk, shaped like a registration result for :meth:`QCRecorder.__call__`."""

    def __init__(self, disp: torch.Tensor, quality: float) -> None:
        self.disp, self.quality = disp, quality
