"""Keypoints, local descriptors and guided mutual-nearest-neighbour matching on feature maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter

from fide import geometry

__all__ = ["detect_keypoints", "describe", "match_mutual"]


def detect_keypoints(image: torch.Tensor, mask: torch.Tensor, num: int, nms_radius: int = 3) -> torch.Tensor:
    """Harris corners inside a mask, strongest first, after non-maximum suppression.

    Args:
        image: (1, 1, H, W) intensities.
        mask: (1, 1, H, W) bool region where keypoints may lie.
        num: maximum number of keypoints.
        nms_radius: suppression radius, pixels.

    Returns:
        (N, 2) keypoints, pixels, array order, N <= num.
    """
    grad_i = image[..., 2:, 1:-1] - image[..., :-2, 1:-1]
    grad_j = image[..., 1:-1, 2:] - image[..., 1:-1, :-2]
    grad_i, grad_j = F.pad(grad_i, (1, 1, 1, 1)), F.pad(grad_j, (1, 1, 1, 1))
    window = GaussianFilter(spatial_dims=2, sigma=1.5)
    tensor = window(torch.cat([grad_i * grad_i, grad_j * grad_j, grad_i * grad_j], dim=1))
    det = tensor[:, 0] * tensor[:, 1] - tensor[:, 2] ** 2
    response = (det - 0.05 * (tensor[:, 0] + tensor[:, 1]) ** 2)[:, None]
    border = torch.zeros_like(mask)
    margin = 2 * nms_radius
    border[..., margin:-margin, margin:-margin] = True
    peaks = response == F.max_pool2d(response, 2 * nms_radius + 1, stride=1, padding=nms_radius)
    response = torch.where(peaks & mask & border & (response > 0), response, torch.zeros_like(response))
    flat = response.flatten()
    count = min(num, int((flat > 0).sum()))
    index = torch.topk(flat, count).indices
    width = image.shape[-1]
    return torch.stack([index // width, index % width], dim=1).to(image.dtype)


def describe(features: torch.Tensor, points: torch.Tensor, radius: int = 2, spacing: float = 2.0) -> torch.Tensor:
    """Descriptors: feature values on a (2r+1)^2 grid around each point, zero-mean and L2-normalised.

    Args:
        features: (1, D, H, W) feature maps.
        points: (N, 2) pixels, array order.

    Returns:
        (N, D * (2r+1)^2) unit vectors.
    """
    steps = torch.arange(-radius, radius + 1, dtype=points.dtype, device=points.device) * spacing
    offsets = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1).view(-1, 2)  # (P, 2)
    samples = geometry.sample_at(features, (points[:, None] + offsets[None]).reshape(-1, 2))  # (N*P, D)
    desc = samples.reshape(len(points), features.shape[1] * len(offsets))  # explicit: N may be 0
    desc = desc - desc.mean(dim=1, keepdim=True)
    return desc / desc.norm(dim=1, keepdim=True).clamp(min=1e-8)


def match_mutual(
    fixed_points: torch.Tensor,
    fixed_desc: torch.Tensor,
    moving_points: torch.Tensor,
    moving_desc: torch.Tensor,
    radius_px: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours by cosine similarity among pairs closer than ``radius_px``.

    Both point sets are in the same frame (the moving one pre-warped by the global search), so the radius encodes
    how far that prediction may be off.

    Returns:
        (M,) indices into the fixed points and (M,) into the moving points.
    """
    if len(fixed_points) == 0 or len(moving_points) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=fixed_points.device)
        return empty, empty
    similarity = fixed_desc @ moving_desc.T
    near = torch.cdist(fixed_points, moving_points) <= radius_px
    similarity = torch.where(near, similarity, torch.full_like(similarity, -2.0))
    best_moving = similarity.argmax(dim=1)
    best_fixed = similarity.argmax(dim=0)
    fixed_index = torch.arange(len(fixed_points), device=fixed_points.device)
    mutual = (best_fixed[best_moving] == fixed_index) & (similarity[fixed_index, best_moving] > -2.0)
    return fixed_index[mutual], best_moving[mutual]
