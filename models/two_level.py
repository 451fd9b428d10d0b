"""GXN's two-level embedding: one vector that faiss can serve.

GXN matches on s* = lam * cos(t_h, v_h) + (1 - lam) * cos(t_l, v_l), over an abstract (high-level)
and a concrete (grounded) embedding of each side. With

    e(x) = [sqrt(lam) * x_h / |x_h| ; sqrt(1 - lam) * x_l / |x_l|]

the inner product e(t) . e(v) is exactly s*, and |e(x)|^2 = lam + (1 - lam) = 1: the joined
vector is already unit length, so an inner-product index over it ranks by s*.
"""

from __future__ import annotations

import math

import torch

from models.encoders.base import l2_normalize


def joint_similarity(text_high: torch.Tensor, text_low: torch.Tensor, image_high: torch.Tensor,
                     image_low: torch.Tensor, lam: float) -> torch.Tensor:
    """s*[i, j] between text i and image j."""
    high = l2_normalize(text_high) @ l2_normalize(image_high).t()
    low = l2_normalize(text_low) @ l2_normalize(image_low).t()
    return lam * high + (1 - lam) * low


def join_levels(high: torch.Tensor, low: torch.Tensor, lam: float) -> torch.Tensor:
    """The served embedding: inner products of these rows are s*."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    return torch.cat([math.sqrt(lam) * l2_normalize(high), math.sqrt(1 - lam) * l2_normalize(low)], dim=1)
