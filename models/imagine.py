"""GXN's "imagine" branch: a text-conditioned GAN over small images.

Conditioning augmentation (Zhang et al., StackGAN): the concrete text feature t gives a Gaussian
N(mu(t), diag(sigma(t)^2)); the condition c is sampled from it (reparameterised), and

    KL(N(mu, sigma^2) || N(0, I)) = 1/2 * sum(mu^2 + sigma^2 - 1 - log sigma^2)   (mean over the batch)

keeps that manifold smooth. The generator maps [c; z] to a 64x64 image. The matching-aware
discriminator (Reed et al. 2016), given an image and a text feature, scores three pairings:
(real image, right text) as real, and both (generated image, right text) and (real image, wrong
text) as fake, so it checks the match, not only the realism. Through the generator, its
gradients reach the text feature: that is how generation shapes GXN's concrete embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kl_to_standard_normal(mu: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mu.pow(2) + log_variance.exp() - 1 - log_variance).sum(dim=1).mean()


class ConditioningAugmentation(nn.Module):
    def __init__(self, text_dim: int, condition_dim: int):
        super().__init__()
        self.moments = nn.Linear(text_dim, 2 * condition_dim)

    def forward(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a sampled condition, its KL term)."""
        condition, _, kl = self.sample(text)
        return condition, kl

    def sample(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a sampled condition (the mean outside training), the mean, the KL term)."""
        mu, log_variance = self.moments(text).chunk(2, dim=1)
        condition = mu + torch.randn_like(mu) * (0.5 * log_variance).exp() if self.training else mu
        return condition, mu, kl_to_standard_normal(mu, log_variance)


def random_translation(images: torch.Tensor, share: float) -> torch.Tensor:
    """Each image shifted by its own random whole-pixel offset of up to `share` of its side in x
    and y, edges repeated (DiffAugment's translation, Zhao et al. 2020). Applied to every picture
    the discriminator sees, real and generated alike, and differentiable, so the generator learns
    through it. Without it the discriminator memorises the few thousand training pictures: its
    matching heads then tell colours apart but hardly shapes, and cannot teach the generator them."""
    limit = round(share * images.shape[-1])
    if limit < 1:
        return images
    count, channels, height, width = images.shape
    padded = F.pad(images, (limit,) * 4, mode="replicate")
    dx, dy = (torch.randint(0, 2 * limit + 1, (count,), device=images.device) for _ in range(2))
    rows = (torch.arange(height, device=images.device)[None, :] + dy[:, None])[:, None, :, None]
    columns = (torch.arange(width, device=images.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(count, device=images.device)[:, None, None, None]
    return padded[batch, torch.arange(channels, device=images.device)[None, :, None, None], rows, columns]


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2))


class Generator(nn.Module):
    """[condition; noise] -> 4x4 -> ... -> image_size x image_size RGB in [-1, 1]."""

    def __init__(self, condition_dim: int, noise_dim: int = 64, width: int = 64, image_size: int = 64):
        super().__init__()
        steps = (image_size // 4).bit_length() - 1
        if 4 * 2 ** steps != image_size:
            raise ValueError(f"image_size {image_size}: expected 4 times a power of two")
        self.noise_dim, self.width = noise_dim, width
        self.start = nn.Sequential(nn.Linear(condition_dim + noise_dim, width * 4 * 4 * 4, bias=False),
                                   nn.BatchNorm1d(width * 4 * 4 * 4), nn.ReLU())
        channels = [width * 4 // 2 ** min(i, 2) for i in range(steps + 1)]
        self.body = nn.Sequential(*[_up(channels[i], channels[i + 1]) for i in range(steps)])
        self.to_rgb = nn.Conv2d(channels[-1], 3, 3, padding=1)

    def forward(self, condition: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(len(condition), self.noise_dim, device=condition.device)
        x = self.start(torch.cat([condition, noise], dim=1)).view(len(condition), self.width * 4, 4, 4)
        return torch.tanh(self.to_rgb(self.body(x)))


class MatchingDiscriminator(nn.Module):
    """Image features at 4x4 feed two heads.

    - A logit, 'real and matching': the features joined with the text feature (compressed by the
      discriminator's own layer, as in StackGAN). It reads the text feature itself, not the
      generator's condition: that condition is pulled towards N(0, I) by the KL term, and a
      discriminator reading it could not tell texts apart before the generator had learnt to.
    - A matching embedding of the image and one of the text (unit vectors), trained contrastively
      on real pairs (XMC-GAN's image-sentence term). The matching-aware logit alone gives the
      generator one bit per image; the contrastive term tells it which of the batch's texts its
      picture resembles, a gradient that names the colour and the shape it got wrong.
    """

    def __init__(self, text_dim: int, condition_dim: int, width: int = 32, image_size: int = 64,
                 match_dim: int | None = None, pretrained: tuple[int, int] | None = None):
        super().__init__()
        steps = (image_size // 4).bit_length() - 1
        channels = [3] + [width * 2 ** min(i, 3) for i in range(steps)]
        self.compress_text = nn.Sequential(nn.Linear(text_dim, condition_dim), nn.LeakyReLU(0.2))
        self.body = nn.Sequential(*[_down(channels[i], channels[i + 1]) for i in range(steps)])
        self.joint = nn.Sequential(nn.Conv2d(channels[-1] + condition_dim, channels[-1], 1), nn.LeakyReLU(0.2),
                                   nn.Conv2d(channels[-1], 1, 4))
        # The matching heads exist only where the contrastive term is used (match_dim given).
        self.match_image = nn.Linear(channels[-1] * 16, match_dim) if match_dim else None
        self.match_text = nn.Linear(text_dim, match_dim) if match_dim else None
        # The same contrastive matching over a frozen pretrained network's pooled features of the
        # image (Projected GAN's idea, Sauer et al. 2021): only these two layers learn, so the
        # heads read shape from ImageNet features at once instead of from features learnt here.
        # `pretrained` = (that network's feature size, the matching space's size).
        self.pretrained_image = nn.Linear(pretrained[0], pretrained[1]) if pretrained else None
        self.pretrained_text = nn.Linear(text_dim, pretrained[1]) if pretrained else None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def score(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """One logit per (image, text) pair: 'real and matching'."""
        condition = self.compress_text(text)
        tiled = condition[:, :, None, None].expand(-1, -1, *features.shape[-2:])
        return self.joint(torch.cat([features, tiled], dim=1)).flatten()

    def matching(self, features: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embeddings, text embeddings), unit length, for `contrastive_matching`."""
        if self.match_image is None:
            raise ValueError("this discriminator was built without matching heads (match_dim)")
        return (F.normalize(self.match_image(features.flatten(1)), dim=1),
                F.normalize(self.match_text(text), dim=1))

    def pretrained_matching(self, pretrained_features: torch.Tensor,
                            text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embeddings from the pretrained network's features, text embeddings), unit length."""
        if self.pretrained_image is None:
            raise ValueError("this discriminator was built without pretrained matching heads (pretrained)")
        return (F.normalize(self.pretrained_image(pretrained_features), dim=1),
                F.normalize(self.pretrained_text(text), dim=1))

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(images), text)


def contrastive_matching(images: torch.Tensor, texts: torch.Tensor, temperature: float,
                         duplicates: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE both ways over the batch: image i should be nearest text i among all the batch's
    texts, and text i nearest image i.  -1/2N sum_i [log softmax_j(<v_i, t_j>/T)_i + log softmax_j(<t_i, v_j>/T)_i]
    `duplicates` (N, N) marks pairs (i, j), i != j, whose texts are the same caption: a second copy
    of the right answer is left out of the negatives rather than counted as a wrong one."""
    logits = images @ texts.t() / temperature
    if duplicates is not None:
        logits = logits.masked_fill(duplicates & ~torch.eye(len(images), dtype=torch.bool, device=images.device),
                                    float("-inf"))
    targets = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def same_text(text: torch.Tensor) -> torch.Tensor:
    """(N, N): which rows of a batch's text features are the same caption (equal vectors)."""
    return (text[:, None, :] == text[None, :, :]).all(dim=-1)


def discriminator_loss(discriminator: MatchingDiscriminator, real: torch.Tensor, fake: torch.Tensor,
                       text: torch.Tensor, match_weight: float = 0.0, temperature: float = 0.1,
                       translation: float = 0.0) -> dict[str, torch.Tensor]:
    """The three pairings; the wrong text for image i is the batch's next one (a different caption
    for a different image); with `match_weight`, the contrastive term on the real pairs too. Every
    picture first goes through `random_translation` by `translation`.
    `fake` is detached: this step trains the discriminator only."""
    wrong = text.roll(1, dims=0)
    real_features = discriminator.features(random_translation(real, translation))
    real_right = discriminator.score(real_features, text)
    fake_right = discriminator(random_translation(fake.detach(), translation), text)
    real_wrong = discriminator.score(real_features, wrong)
    bce = F.binary_cross_entropy_with_logits
    terms = {"real_right": bce(real_right, torch.ones_like(real_right)),
             "fake_right": bce(fake_right, torch.zeros_like(fake_right)),
             "real_wrong": bce(real_wrong, torch.zeros_like(real_wrong))}
    terms["loss"] = terms["real_right"] + (terms["fake_right"] + terms["real_wrong"]) / 2
    if match_weight:
        terms["real_matching"] = contrastive_matching(*discriminator.matching(real_features, text), temperature,
                                                      same_text(text))
        terms["loss"] = terms["loss"] + match_weight * terms["real_matching"]
    return terms


def generator_loss(discriminator: MatchingDiscriminator, fake: torch.Tensor, text: torch.Tensor,
                   match_weight: float = 0.0, temperature: float = 0.1,
                   translation: float = 0.0) -> dict[str, torch.Tensor]:
    """Fool the discriminator on (generated image, right text) and, with `match_weight`, make each
    generated image the nearest, in the discriminator's matching space, to its own text (pictures
    translated as in `discriminator_loss`). Gradients reach whatever made `fake` (and `text`,
    unless the caller detaches it, as GXN does)."""
    features = discriminator.features(random_translation(fake, translation))
    scores = discriminator.score(features, text)
    terms = {"fooled": F.binary_cross_entropy_with_logits(scores, torch.ones_like(scores))}
    terms["loss"] = terms["fooled"]
    if match_weight:
        terms["fake_matching"] = contrastive_matching(*discriminator.matching(features, text), temperature,
                                                      same_text(text))
        terms["loss"] = terms["loss"] + match_weight * terms["fake_matching"]
    return terms
