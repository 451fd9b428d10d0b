"""GXN's served embedding: its inner product is the two-level similarity s* (#6 groundwork)."""

from __future__ import annotations

import pytest
import torch

from models.two_level import join_levels, joint_similarity


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_inner_product_of_joined_vectors_is_s_star(lam):
    generator = torch.Generator().manual_seed(0)
    t_h, t_l = torch.randn(5, 8, generator=generator) * 3, torch.randn(5, 6, generator=generator)
    v_h, v_l = torch.randn(4, 8, generator=generator), torch.randn(4, 6, generator=generator) * 0.1
    texts, images = join_levels(t_h, t_l, lam), join_levels(v_h, v_l, lam)
    assert torch.allclose(texts @ images.t(), joint_similarity(t_h, t_l, v_h, v_l, lam), atol=1e-6)
    assert torch.allclose(texts.norm(dim=1), torch.ones(5), atol=1e-6)  # already unit length
    with pytest.raises(ValueError, match="lambda must be in"):
        join_levels(t_h, t_l, 1.5)
