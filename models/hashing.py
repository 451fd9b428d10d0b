"""Deep cross-modal hashing (Jiang & Li, CVPR 2017, "DCMH"): binary codes for images and texts
whose Hamming distance ranks like the float embedding does, at 16-128 bits a vector.

A hashing head on each tower maps its features to c real outputs, F (images) and G (texts), one
row per training item. With S_ij = 1 when image i and text j are a pair and Theta_ij = F_i . G_j / 2,
DCMH minimises

    J = - sum_ij [S_ij Theta_ij - log(1 + exp(Theta_ij))]       the pairs' negative log-likelihood
        + gamma (|B - F|^2 + |B - G|^2)                         quantisation: F, G near the codes
        + eta / n (|F^T 1|^2 + |G^T 1|^2)                       bit balance: each bit +1 half the time

over the heads and the codes B in {-1, +1}, alternately: the image head with G fixed, the text
head with F fixed, then B = sign(F + G), the minimiser of the quantisation term. A query's code is
the sign of its head's output. The balance term is divided by the n training items here, a
choice: it makes the balance n times weaker than DCMH's eta, and on Flickr8k the codes still come
out balanced (a bit's mean over the items is 0.01-0.03 from 0 on average).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


def pair_log_likelihood(image_out: torch.Tensor, text_out: torch.Tensor, similar: torch.Tensor,
                        weighted: bool = False, scale: float = 0.5) -> torch.Tensor:
    """-sum_ij w_ij [S_ij Theta_ij - log(1 + e^Theta_ij)], Theta = F G^T / 2 (softplus keeps it
    stable). w = 1 is DCMH's. `weighted` gives the similar and the dissimilar pairs equal total
    weight (w = pairs / (2 similar pairs) or pairs / (2 dissimilar pairs), HashNet's remedy): with
    one photo's captions similar among thousands, the unweighted sum is won by making every pair
    dissimilar, which constant codes do. `scale` replaces DCMH's 1/2 in Theta (HashNet's alpha:
    smaller keeps the sigmoid from saturating at long codes)."""
    theta = scale * image_out @ text_out.t()
    terms = similar * theta - F.softplus(theta)
    if weighted:
        positives = similar.sum().clamp_min(1.0)
        negatives = (similar.numel() - similar.sum()).clamp_min(1.0)
        weights = torch.where(similar > 0, similar.numel() / (2 * positives), similar.numel() / (2 * negatives))
        terms = weights * terms
    return -terms.sum()


def quantisation(codes: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """|B - F|^2 over the rows given."""
    return (codes - outputs).pow(2).sum()


def bit_balance(outputs: torch.Tensor) -> torch.Tensor:
    """|F^T 1|^2: per bit, the squared sum over items (0 when every bit is +1 for half of them)."""
    return outputs.sum(dim=0).pow(2).sum()


def update_codes(image_out: torch.Tensor, text_out: torch.Tensor) -> torch.Tensor:
    """B = sign(F + G), with sign(0) = +1 so every bit is a bit."""
    return torch.where(image_out + text_out >= 0, 1.0, -1.0)


def binary_codes(outputs: torch.Tensor) -> np.ndarray:
    """Head outputs -> packed codes (N, bits / 8) uint8, bit b of an item set when output b >= 0."""
    bits = (outputs >= 0).cpu().numpy().astype(np.uint8)
    return np.packbits(bits, axis=1)


def hamming_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(Q, N) Hamming distances between packed codes (exact; for evaluation on small sets)."""
    xor = np.bitwise_xor(queries[:, None, :], database[None, :, :])
    return np.unpackbits(xor, axis=2).sum(axis=2, dtype=np.int32)


class HashingHead(nn.Module):
    """A tower's features -> `bits` real outputs (two layers, ReLU); their signs are the code."""

    def __init__(self, in_dim: int, bits: int, hidden: int = 1024):
        super().__init__()
        if bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        self.bits = bits
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


@dataclass
class DCMHConfig:
    bits: int = 64
    gamma: float = 1.0      # quantisation weight
    eta: float = 1.0        # bit-balance weight (the term is divided by the item count)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    hidden: int = 1024
    weighted: bool = False  # equal weight to the similar and the dissimilar pairs (see pair_log_likelihood)
    theta_scale: float = 0.5  # Theta = theta_scale * F . G (DCMH: 1/2)
    seed: int = 0


@dataclass
class DCMHHeads:
    image: HashingHead
    text: HashingHead
    history: list[dict] = field(default_factory=list)

    @torch.no_grad()
    def image_codes(self, features: torch.Tensor) -> np.ndarray:
        return binary_codes(self.image.eval()(features.float()))

    @torch.no_grad()
    def text_codes(self, features: torch.Tensor) -> np.ndarray:
        return binary_codes(self.text.eval()(features.float()))


def train_dcmh(image_features: torch.Tensor, text_features: torch.Tensor, groups: torch.Tensor,
               config: DCMHConfig, progress: bool = True) -> DCMHHeads:
    """DCMH's alternating optimisation over n training items: row i of each side is a pair, and
    image i and text j are similar when `groups[i] == groups[j]` (the same photo: each of its
    captions is a row with a view of it; or shared attributes). Each epoch: the image head over
    mini-batches against all of G, the text head against all of F, then B = sign(F + G)."""
    torch.manual_seed(config.seed)
    n = len(image_features)
    if len(text_features) != n or len(groups) != n:
        raise ValueError(f"{n} images, {len(text_features)} texts and {len(groups)} groups: rows must be pairs")
    heads = DCMHHeads(HashingHead(image_features.shape[1], config.bits, config.hidden),
                      HashingHead(text_features.shape[1], config.bits, config.hidden))
    optimizers = [torch.optim.Adam(head.parameters(), lr=config.lr) for head in (heads.image, heads.text)]
    with torch.no_grad():
        image_out, text_out = heads.image(image_features), heads.text(text_features)
    codes = update_codes(image_out, text_out)
    for epoch in tqdm(range(config.epochs), desc=f"DCMH {config.bits} bits", unit="epoch", disable=not progress):
        image_loss = _train_side(heads.image, optimizers[0], image_features, image_out, text_out, codes, groups,
                                 config)
        text_loss = _train_side(heads.text, optimizers[1], text_features, text_out, image_out, codes, groups,
                                config)
        codes = update_codes(image_out, text_out)
        heads.history.append({"epoch": epoch + 1, "image_objective": image_loss, "text_objective": text_loss,
                              "balance": float((codes.mean(dim=0)).abs().mean())})
    return heads


def _train_side(head: HashingHead, optimizer: torch.optim.Optimizer, features: torch.Tensor,
                own_out: torch.Tensor, other_out: torch.Tensor, codes: torch.Tensor, groups: torch.Tensor,
                config: DCMHConfig) -> float:
    """One pass of one head over the items in mini-batches, the other side's outputs fixed; its own
    stored outputs (for the balance term over all items) are refreshed batch by batch."""
    head.train()
    total, n = 0.0, len(features)  # the pass's likelihood + quantisation; the balance term once, below
    for batch in torch.randperm(n).split(config.batch_size):
        out = head(features[batch])
        similar = (groups[batch, None] == groups[None, :]).float()
        others_sum = own_out.sum(dim=0) - own_out[batch].sum(dim=0)
        fit = (pair_log_likelihood(out, other_out, similar, config.weighted, config.theta_scale)
               + config.gamma * quantisation(codes[batch], out))
        balance = config.eta / n * (out.sum(dim=0) + others_sum).pow(2).sum()  # over all items, this batch new
        optimizer.zero_grad()
        ((fit + balance) / len(batch)).backward()
        optimizer.step()
        own_out[batch] = out.detach()
        total += float(fit.detach())
    return (total + config.eta / n * float(bit_balance(own_out))) / n
