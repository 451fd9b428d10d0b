"""GXN's imagine branch: KL term, conditioning, the three discriminator pairings, the contrastive term."""

from __future__ import annotations

import math

import pytest
import torch

from models.imagine import (
    ConditioningAugmentation,
    Generator,
    MatchingDiscriminator,
    contrastive_matching,
    discriminator_loss,
    generator_loss,
    kl_to_standard_normal,
    random_translation,
)


def test_kl_term_on_a_hand_made_case():
    mu, log_variance = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    # 1/2 [(1 + 1 - 1 - 0) + (0 + 4 - 1 - log 4)]
    assert float(kl_to_standard_normal(mu, log_variance)) == pytest.approx(0.5 * (1 + 3 - math.log(4)))
    assert float(kl_to_standard_normal(torch.zeros(3, 5), torch.zeros(3, 5))) == 0.0


def test_conditioning_samples_while_training_and_uses_the_mean_in_eval():
    torch.manual_seed(0)
    augment = ConditioningAugmentation(text_dim=6, condition_dim=4)
    text = torch.randn(2, 6)
    first, kl = augment(text)
    second, _ = augment(text)
    assert first.shape == (2, 4) and kl > 0 and not torch.equal(first, second)
    augment.eval()
    assert torch.equal(augment(text)[0], augment(text)[0])


@pytest.mark.parametrize("size", [32, 64])
def test_generator_makes_images_of_the_asked_size(size):
    images = Generator(condition_dim=4, noise_dim=8, width=8, image_size=size)(torch.randn(2, 4))
    assert images.shape == (2, 3, size, size) and images.abs().max() <= 1
    with pytest.raises(ValueError, match="4 times a power of two"):
        Generator(condition_dim=4, image_size=48)


def test_discriminator_sees_the_three_pairings_and_gradients_reach_the_text():
    torch.manual_seed(0)
    augment = ConditioningAugmentation(text_dim=6, condition_dim=4)
    generator = Generator(condition_dim=4, noise_dim=8, width=8, image_size=32)
    discriminator = MatchingDiscriminator(text_dim=4, condition_dim=4, width=8, image_size=32)
    text = torch.randn(3, 6, requires_grad=True)
    condition, _ = augment(text)
    real = torch.rand(3, 3, 32, 32) * 2 - 1
    fake = generator(condition)
    seen_images, seen_texts = [], []
    features, score = discriminator.features, discriminator.score
    discriminator.features = lambda images: seen_images.append(images) or features(images)
    discriminator.score = lambda image_features, text: seen_texts.append(text) or score(image_features, text)
    terms = discriminator_loss(discriminator, real, fake, condition)
    assert set(terms) == {"real_right", "fake_right", "real_wrong", "loss"}
    real_1, fake_2 = seen_images  # the real images' features serve both the right and the wrong text
    right_1, right_2, wrong_3 = seen_texts
    assert real_1 is real and torch.equal(fake_2, fake.detach()) and not fake_2.requires_grad
    assert torch.equal(right_1, condition) and torch.equal(right_2, condition)
    assert torch.equal(wrong_3, condition.roll(1, dims=0)) and not torch.equal(wrong_3, condition)
    generator_loss(discriminator, fake, condition)["loss"].backward()
    assert text.grad is not None and text.grad.abs().sum() > 0  # generation shapes the text feature


def test_contrastive_matching_on_a_hand_made_case():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # matched pairs: each row's right answer scores 1/T, the other 0 -> -log(e^10 / (e^10 + 1)) both ways
    assert float(contrastive_matching(images, images, 0.1)) == pytest.approx(math.log1p(math.exp(-10)), rel=1e-3)
    swapped = float(contrastive_matching(images, images.flip(0), 0.1))
    assert swapped == pytest.approx(10 + math.log1p(math.exp(-10)))
    # two copies of one caption: each copy is not a wrong answer for the other's image
    same = torch.tensor([[1.0, 0.0]]).repeat(2, 1)
    duplicates = torch.ones(2, 2, dtype=torch.bool)
    assert float(contrastive_matching(same, same, 0.1)) == pytest.approx(math.log(2), rel=1e-4)
    assert float(contrastive_matching(same, same, 0.1, duplicates)) == pytest.approx(0.0, abs=1e-6)


def test_the_contrastive_term_is_trained_on_real_pairs_and_pulls_the_fakes():
    torch.manual_seed(0)
    discriminator = MatchingDiscriminator(text_dim=4, condition_dim=4, width=8, image_size=32, match_dim=6)
    text = torch.randn(3, 4)
    real, fake = torch.rand(3, 3, 32, 32) * 2 - 1, (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_()
    terms = discriminator_loss(discriminator, real, fake, text, match_weight=1.0)
    plain = discriminator_loss(discriminator, real, fake, text)
    assert float(terms["loss"].detach()) == pytest.approx(float((plain["loss"] + terms["real_matching"]).detach()))
    terms["loss"].backward()
    assert fake.grad is None and discriminator.match_image.weight.grad.abs().sum() > 0
    generated = generator_loss(discriminator, fake, text, match_weight=1.0)
    assert set(generated) == {"fooled", "fake_matching", "loss"}
    generated["fake_matching"].backward()
    assert fake.grad.abs().sum() > 0


def test_random_translation_shifts_each_picture_by_at_most_its_share_and_passes_gradients():
    torch.manual_seed(0)
    images = torch.zeros(64, 1, 16, 16)
    images[:, :, 8, 8] = 1.0  # one lit pixel in the middle of each picture
    images.requires_grad_(True)
    assert random_translation(images, 0.0) is images and random_translation(images, 0.03) is images  # < 1 px
    moved = random_translation(images, 0.125)  # up to 2 px each way
    assert moved.shape == images.shape
    lit = moved.detach().flatten(1).argmax(1)
    rows, columns = lit // 16, lit % 16
    assert ((rows - 8).abs() <= 2).all() and ((columns - 8).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), columns.tolist(), strict=True))) > 10  # each picture its own offset
    assert torch.allclose(moved.detach().sum(dim=(1, 2, 3)), torch.ones(64))  # a shift, not a blur
    moved.sum().backward()
    assert images.grad is not None and float(images.grad.sum()) > 0
