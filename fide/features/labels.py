"""k-means label maps with chain-ordered labels (globalign), the input of every mutual-information score."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["KMEANS_ITERATIONS", "kmeans_labels", "one_hot_labels"]

KMEANS_ITERATIONS = 20  # code: Lloyd iterations of the k-means label maps


def _init_centroids(samples: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    if samples.shape[1] == 1:  # 1-D: evenly spaced quantiles are deterministic and near-optimal
        q = (torch.arange(k, dtype=samples.dtype, device=samples.device) + 0.5) / k
        return torch.quantile(samples[:, 0], q)[:, None]
    centroids = [samples[torch.randint(len(samples), (1,), generator=generator, device="cpu").item()]]
    for _ in range(1, k):  # k-means++ seeding
        dist = torch.cdist(samples, torch.stack(centroids)).amin(dim=1) ** 2
        probs = (dist / dist.sum().clamp(min=1e-12)).cpu()
        centroids.append(samples[torch.multinomial(probs, 1, generator=generator).item()])
    return torch.stack(centroids)


def _chain_order(centroids: torch.Tensor) -> torch.Tensor:
    """Renumber clusters along a nearest-centroid chain from the darkest one, so neighbouring label values are
    similar colours and interpolated labels stay meaningful (globalign's relabel_clusters)."""
    k = len(centroids)
    order = [int(centroids.norm(dim=1).argmin())]
    remaining = set(range(k)) - set(order)
    while remaining:
        last = centroids[order[-1]]
        nxt = min(remaining, key=lambda j: float((centroids[j] - last).norm()))
        order.append(nxt)
        remaining.remove(nxt)
    rank = torch.empty(k, dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(k)
    return rank


def kmeans_labels(
    image: torch.Tensor,
    k: int,
    *,
    iterations: int = KMEANS_ITERATIONS,
    max_samples: int = 40_000,
    seed: int = 0,
) -> torch.Tensor:
    """Quantise an image into ``k`` chain-ordered k-means labels.

    Args:
        image: (1, C, H, W) features in comparable units (e.g. [0, 1]).
        k: number of labels, >= 2.
        iterations: Lloyd iterations on a random subsample of pixels.
        max_samples: pixels used to fit the centroids.
        seed: seed of the subsample and of k-means++.

    Returns:
        (1, 1, H, W) int64 labels in [0, k).
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, H, W), got {tuple(image.shape)}")
    generator = torch.Generator().manual_seed(seed)
    pixels = image[0].flatten(1).T  # (N, C)
    if len(pixels) > max_samples:
        pick = torch.randperm(len(pixels), generator=generator)[:max_samples].to(pixels.device)
        samples = pixels[pick]
    else:
        samples = pixels
    centroids = _init_centroids(samples, k, generator)
    for _ in range(iterations):
        assign = torch.cdist(samples, centroids).argmin(dim=1)
        member = F.one_hot(assign, k).T.to(samples.dtype)  # (k, N); index_add's CUDA atomics vary run to run
        counts = member.sum(1)
        sums = member @ samples
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    rank = _chain_order(centroids.cpu()).to(image.device)
    labels = torch.cat([torch.cdist(chunk, centroids).argmin(dim=1) for chunk in pixels.split(262_144)])
    return rank[labels].view(1, 1, *image.shape[2:])


def one_hot_labels(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(1, 1, H, W) int labels → (1, k, H, W) float indicators."""
    return F.one_hot(labels[:, 0], k).permute(0, 3, 1, 2).float()
