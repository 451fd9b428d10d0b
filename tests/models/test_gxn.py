"""GXN: the served vector's inner product is s*, the alternating discriminator step, captions and
imagined images from a trained-from-scratch model, self-critical training, checkpoints with every
generator, the ablation without generative terms, and a tiny end-to-end training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import create_encoder, load_encoder
from models.caption_decoder import leave_one_out_baseline
from models.data import load_records, select_split
from models.training import TrainConfig, train
from models.training.trainer import _freeze_all_but, _hold_fixed_modules, _parameter_groups
from models.two_level import joint_similarity
from models.vocab import SPECIALS, Vocabulary

CAPTIONS = ["a small red circle on the left", "a large blue square at the top", "a yellow cross",
            "two green stars in the centre"]
VOCAB = Vocabulary.build(CAPTIONS)


def _encoder(**overrides):
    return create_encoder("gxn_tiny", vocab=VOCAB, overrides=overrides)


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_served_inner_product_is_the_two_level_similarity(lam):
    encoder = _encoder(**{"lambda": lam}).eval()
    images, texts = encoder.encode_image(_images()), encoder.encode_text(CAPTIONS)
    with torch.no_grad():
        image_high, image_low, _ = encoder.image_tower(encoder.prepare_images(_images()))
        expected = joint_similarity(encoder.text_high(CAPTIONS), encoder.text_low(CAPTIONS), image_high, image_low, lam)
    assert images.shape == texts.shape == (4, 64)
    assert torch.allclose(images.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(texts @ images.t(), expected, atol=1e-5)


def test_training_losses_follow_the_schedule_and_reach_every_branch():
    encoder = _encoder(schedule={"warmup_epochs": 1}).train()
    warm = encoder.training_losses(_images(), CAPTIONS, epoch=0, image_ids=torch.arange(4))
    assert set(warm) == {"loss", "ranking"} and encoder.discriminator_losses(_images(), CAPTIONS, 0) is None
    assert encoder.describe_epoch(0) == {"stage": "ranking only"}
    full = encoder.training_losses(_images(), CAPTIONS, epoch=1, image_ids=torch.arange(4))
    assert {"ranking", "caption_xent", "generator", "kl"} <= set(full)
    assert encoder.describe_epoch(1) == {"stage": "ranking + captioning + imagining"}
    full["loss"].backward()
    for module in (encoder.decoder, encoder.generator, encoder.conditioning, encoder.text_low, encoder.text_high,
                   encoder.image_tower.project_low):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_the_discriminator_sees_translated_pictures_when_asked():
    torch.manual_seed(0)
    plain = _encoder(imagine={"match_weight": 1.0}).train()
    shifted = _encoder(imagine={"match_weight": 1.0, "translation": 0.125}).train()
    shifted.load_state_dict(plain.state_dict())
    same = [float(plain.discriminator_losses(_images(), CAPTIONS, 0)["real_right"].detach()) for _ in range(2)]
    moved = [float(shifted.discriminator_losses(_images(), CAPTIONS, 0)["real_right"].detach()) for _ in range(2)]
    assert same[0] == pytest.approx(same[1]) and moved[0] != pytest.approx(moved[1])  # a new shift each step
    with pytest.raises(ValueError, match="translation"):
        _encoder(imagine={"translation": 0.5})


def test_discriminator_is_trained_in_its_own_step_only():
    encoder = _encoder().train()
    discriminator = set(map(id, encoder.discriminator.parameters()))
    main = [p for group in _parameter_groups(encoder, 1e-3) for p in group["params"]]
    assert main and not discriminator & set(map(id, main))
    optimizer = encoder.discriminator_optimizer()
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == discriminator
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    terms = encoder.discriminator_losses(_images(), CAPTIONS, epoch=0)
    assert {"real_right", "fake_right", "real_wrong", "loss"} <= set(terms)
    terms["loss"].backward()
    # the discriminator's step sees generated images and text conditions as constants
    assert all(p.grad is None for p in [*encoder.generator.parameters(), *encoder.text_low.parameters(),
                                        *encoder.conditioning.parameters()])
    assert all(p.grad is not None for p in encoder.discriminator.parameters())
    # ... and the generator/embedding step leaves the discriminator alone
    encoder.zero_grad(set_to_none=True)
    encoder.training_losses(_images(), CAPTIONS, epoch=0)["loss"].backward()
    assert all(p.grad is None for p in encoder.discriminator.parameters())
    assert all(p.requires_grad for p in encoder.discriminator.parameters())


def test_text_learns_from_the_generator_loss_only_through_the_generated_image(monkeypatch):
    """The condition given to the discriminator in the generator step is a constant: with the
    generator's output cut off, the generator loss sends no gradient to the text encoder."""
    encoder = _encoder(caption={"weight": 0.0}, imagine={"kl_weight": 0.0}).train()
    monkeypatch.setattr("models.encoders.gxn.ranking_loss", lambda loss, scores, epoch: scores.sum() * 0)
    monkeypatch.setattr(encoder.generator, "forward", lambda condition, noise=None: torch.zeros(
        len(condition), 3, 32, 32))
    encoder.training_losses(_images(), CAPTIONS, epoch=0)["loss"].backward()
    assert all(p.grad is None or not p.grad.abs().sum() for p in encoder.text_low.parameters())


def test_generated_captions_are_vocabulary_words_greedy_and_beam():
    encoder = _encoder().eval()
    for width in (1, 2):
        captions = encoder.describe(_images(), beam_width=width)
        assert len(captions) == 4
        for caption in captions:
            words = caption.split()
            assert len(words) <= encoder.decoder.max_length
            assert all(w in VOCAB.index and w not in SPECIALS for w in words)


def test_describe_hands_the_configured_length_alpha_to_the_beam(monkeypatch):
    encoder = _encoder(caption={"length_alpha": 0.5}).eval()
    seen = {}

    def beam(features, regions, width, length_alpha):
        seen.update(width=width, length_alpha=length_alpha)
        return [[] for _ in range(len(features))]

    monkeypatch.setattr(encoder.decoder, "beam", beam)
    encoder.describe(_images(), beam_width=4)
    assert seen == {"width": 4, "length_alpha": 0.5}
    with pytest.raises(ValueError, match="length_alpha"):
        _encoder(caption={"length_alpha": -1.0})
    with pytest.raises(ValueError, match="scst_samples"):
        _encoder(caption={"scst_samples": 0})


def test_imagined_images_are_seeded_uint8_pictures():
    encoder = _encoder().eval()
    first, again = encoder.imagine(["a red circle", "a yellow cross"]), encoder.imagine(["a red circle"])
    assert first.dtype == torch.uint8 and first.shape == (2, 3, 32, 32)
    assert torch.equal(first[:1], again)
    assert not torch.equal(first[0], first[1])


def test_self_critical_loss_is_reinforce_with_the_greedy_baseline(scenes, monkeypatch):
    records = select_split(load_records(scenes), "train")
    vocab = Vocabulary.build([c for r in records for c in r.captions])
    encoder = create_encoder("gxn_tiny", vocab=vocab, overrides={"caption": {"scst_from_epoch": 0}}).train()
    encoder.attach_training_records(records)
    captions = [r.captions[0] for r in records[:4]]
    losses = encoder.training_losses(_images(), captions, epoch=0, image_ids=torch.arange(4))
    assert {"scst", "cider_reward"} <= set(losses) and torch.isfinite(losses["scst"])
    assert "self-critical" in encoder.describe_epoch(0)["stage"]
    # with known rewards: loss = -mean((reward - baseline) * log p(sample))
    log_prob = torch.tensor([[-1.0, -2.0, -3.0, -4.0]], requires_grad=True)  # (stages, images)
    monkeypatch.setattr(encoder.decoder, "sample", lambda f, r: ([[[5], [6], [7], [8]]], log_prob))
    monkeypatch.setattr(encoder.decoder, "greedy_stages", lambda f, r: [[[5], [5], [5], [5]]])
    rewards = {vocab.decode([w]): value for w, value in zip([5, 6, 7, 8], [1.0, 3.0, 0.5, 2.0], strict=True)}
    monkeypatch.setattr(encoder._cider, "scores", lambda cands, refs: np.array([rewards[c] for c in cands]))
    loss, mean_reward = encoder._self_critical_loss(torch.zeros(4, 32), torch.zeros(4, 16, 128), torch.arange(4))
    advantages = torch.tensor([0.0, 2.0, -0.5, 1.0])  # each sample's reward minus the greedy caption's (1.0)
    assert float(loss.detach()) == pytest.approx(float(-(advantages * log_prob).mean().detach()))
    assert float(mean_reward) == pytest.approx(1.625)
    loss.backward()
    assert torch.allclose(log_prob.grad, -advantages[None] / 4)  # a sample equal to the baseline gets no push
    with pytest.raises(ValueError, match="training captions"):
        _encoder(caption={"scst_from_epoch": 0}).train().training_losses(_images(), CAPTIONS, 0, torch.arange(4))


def test_stack_cap_self_critical_loss_uses_the_multi_stage_reward(scenes, monkeypatch):
    records = select_split(load_records(scenes), "train")
    vocab = Vocabulary.build([c for r in records for c in r.captions])
    encoder = create_encoder("gxn_tiny", vocab=vocab, overrides={
        "caption": {"decoder": "stack_cap", "fine_stages": 2, "scst_from_epoch": 0}}).train()
    encoder.attach_training_records(records)
    losses = encoder.training_losses(_images(), [r.captions[0] for r in records[:4]], 0, torch.arange(4))
    assert torch.isfinite(losses["scst"])
    # three stages, two images: stage rewards by the word sampled / decoded greedily
    log_prob = torch.tensor([[-1.0, -2.0], [-1.5, -0.5], [-2.0, -1.0]], requires_grad=True)
    sampled = [[[5], [6]], [[6], [6]], [[7], [5]]]
    greedy = [[[5], [5]], [[5], [5]], [[6], [6]]]
    monkeypatch.setattr(encoder.decoder, "sample", lambda f, r: (sampled, log_prob))
    monkeypatch.setattr(encoder.decoder, "greedy_stages", lambda f, r: greedy)
    values = {5: 1.0, 6: 2.0, 7: 4.0}
    monkeypatch.setattr(encoder._cider, "scores", lambda cands, refs: np.array(
        [values[vocab.index[c]] for c in cands]))
    loss, mean_reward = encoder._self_critical_loss(torch.zeros(2, 32), torch.zeros(2, 16, 128), torch.arange(2))
    rewards = torch.tensor([[1.0, 2.0], [2.0, 2.0], [4.0, 1.0]])  # baselines: [[1, 1], [1, 1], [2, 2]]
    # stage 0: r - b; stages 1, 2: (r - b) + (r - r of the stage before)
    advantages = torch.tensor([[0.0, 1.0], [1.0 + 1.0, 1.0 + 0.0], [2.0 + 2.0, -1.0 - 1.0]])
    assert float(loss.detach()) == pytest.approx(float(-(advantages * log_prob).sum(0).mean().detach()))
    assert float(mean_reward) == pytest.approx(float(rewards[-1].mean()))  # the last stage speaks
    loss.backward()
    assert torch.allclose(log_prob.grad, -advantages / 2)


def test_checkpoint_round_trip_keeps_every_generator(tmp_path):
    encoder = _encoder().train()
    encoder.training_losses(_images(), CAPTIONS, epoch=0)["loss"].backward()  # move batch-norm statistics
    encoder.eval()
    path = encoder.save(tmp_path / "gxn.pt")
    loaded = load_encoder(path)
    assert loaded.family == "gxn" and loaded.describes_images and loaded.imagines_texts
    state, restored = encoder.state_dict(), loaded.state_dict()
    assert state.keys() == restored.keys()
    assert any(k.startswith("generator.") for k in state) and any(k.startswith("discriminator.") for k in state)
    assert all(torch.equal(state[k], restored[k]) for k in state)
    assert torch.allclose(encoder.encode_image(_images()), loaded.encode_image(_images()))
    assert encoder.describe(_images(), beam_width=2) == loaded.describe(_images(), beam_width=2)
    assert torch.equal(encoder.imagine(CAPTIONS), loaded.imagine(CAPTIONS))


def test_ablation_without_generative_terms_has_no_generators():
    encoder = _encoder(caption={"weight": 0.0}, imagine={"weight": 0.0}).train()
    assert not encoder.describes_images and not encoder.imagines_texts
    assert encoder.discriminator_parameters() == [] and encoder.discriminator_optimizer() is None
    assert set(encoder.training_losses(_images(), CAPTIONS, epoch=5)) == {"loss", "ranking"}
    with pytest.raises(ValueError, match="without the caption decoder"):
        encoder.describe(_images())
    with pytest.raises(ValueError, match="without the image generator"):
        encoder.imagine(["a red circle"])


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="needs a ResNet"):
        _encoder(image={"backbone": "openclip"})
    with pytest.raises(ValueError, match="must be even"):
        _encoder(embed_dim=63)
    with pytest.raises(ValueError, match="lambda"):
        _encoder(**{"lambda": 1.5})
    with pytest.raises(ValueError, match="vocabulary"):
        create_encoder("gxn_tiny")


def test_training_alternates_steps_logs_caption_quality_and_resumes_exactly(scenes, tmp_path):
    def config(out: str) -> TrainConfig:
        return TrainConfig(data=str(scenes), model="gxn_tiny", out_dir=str(tmp_path / out), epochs=3,
                           batch_size=16, lr=1e-3, min_word_count=1, augment=False, threads=2,
                           model_overrides={"schedule": {"warmup_epochs": 1}})

    train(config("run"), progress=False, stop_after_epochs=2)
    state = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert state["discriminator_optimizer"]["state"]  # the discriminator's Adam moments are kept
    result = train(config("run"), resume=True, progress=False)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h["stage"] for h in history] == ["ranking only"] + ["ranking + captioning + imagining"] * 2
    assert "discriminator_loss" not in history[0]["loss_terms"]
    assert {"discriminator_real_right", "discriminator_fake_right", "discriminator_real_wrong", "generator",
            "caption_xent"} <= set(history[1]["loss_terms"])
    assert set(history[1]["val_generation"]) == {"bleu4", "cider_d"}
    assert load_encoder(result.best_checkpoint).imagines_texts
    # an uninterrupted run ends where the interrupted-and-resumed one did
    train(config("straight"), progress=False)
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())["history"]
    assert straight[-1]["loss_terms"] == pytest.approx(history[-1]["loss_terms"], rel=1e-4)


def _describing_gxn(scenes, out_dir):
    """A tiny GXN trained one epoch without its imagine branch: the source of the stage tests."""
    config = TrainConfig(data=str(scenes), model="gxn_tiny", out_dir=str(out_dir), epochs=1, batch_size=16,
                         lr=1e-3, min_word_count=1, augment=False, threads=2,
                         model_overrides={"imagine": {"weight": 0.0}})
    return train(config, progress=False).best_checkpoint


def _stage(scenes, source, out_dir, **options) -> TrainConfig:
    return TrainConfig(data=str(scenes), init_from=str(source), out_dir=str(out_dir), batch_size=16, lr=1e-3,
                       min_word_count=1, augment=False, threads=2, **options)


def test_a_caption_stage_trains_the_decoder_alone_and_keeps_the_best_captions(scenes, tmp_path):
    """init_from a trained GXN, train_only the decoder, select by val CIDEr-D: the embedding (and
    so every retrieval figure) is the source's, bit for bit; the decoder moved; model_best is the
    epoch with the best captions."""
    source = _describing_gxn(scenes, tmp_path / "first")
    stage = _stage(scenes, source, tmp_path / "stage", epochs=2, train_only=["decoder"], select_by="cider_d")
    result = train(stage, progress=False)
    before, after = load_encoder(source).state_dict(), load_encoder(result.best_checkpoint).state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(name.startswith("decoder.") for name in moved)
    history = result.history
    assert history[0]["val"] == history[1]["val"]  # retrieval untouched
    encoder = load_encoder(source).train()
    _freeze_all_but(encoder, ["decoder"])
    _hold_fixed_modules(encoder)
    assert encoder.decoder.training and not encoder.image_tower.training and not encoder.text_low.training
    assert all(m.training for m in encoder.decoder.modules())  # its dropout too
    best_is_last = history[1]["val_generation"]["cider_d"] > history[0]["val_generation"]["cider_d"]
    last = load_encoder(tmp_path / "stage" / "checkpoint_last.pt").state_dict()
    assert after["decoder.embed.weight"].equal(last["decoder.embed.weight"]) == best_is_last


def test_an_imagine_stage_adds_the_branch_to_a_describing_gxn_and_trains_only_it(scenes, tmp_path):
    """init_from a GXN built without the imagine branch, with the branch switched on and only the
    generator and its conditioning in train_only: the branch starts anew and trains (the
    discriminator in its own step); the embedding and the decoder stay the source's, bit for bit."""
    source = _describing_gxn(scenes, tmp_path / "first")
    stage = _stage(scenes, source, tmp_path / "stage", epochs=1, train_only=["generator", "conditioning"],
                   model_overrides={"imagine": {"weight": 1.0, "translation": 0.125}})
    result = train(stage, progress=False)
    source_encoder, staged = load_encoder(source), load_encoder(result.best_checkpoint)
    assert staged.imagines_texts and not source_encoder.imagines_texts
    before, after = source_encoder.state_dict(), staged.state_dict()
    shared = {name for name in before if not torch.equal(before[name], after[name])}
    assert not shared  # embedding and decoder untouched
    added = {name.split(".")[0] for name in set(after) - set(before)}
    assert added == {"generator", "conditioning", "discriminator"}
    terms = result.history[0]["loss_terms"]
    assert "generator" in terms and "caption_xent" not in terms


def test_a_caption_stage_leaves_the_discriminator_to_its_own_step_and_unfreezes_nothing():
    encoder = _encoder(image={"freeze": True}).train()
    _freeze_all_but(encoder, ["decoder"])
    assert all(p.requires_grad for p in encoder.discriminator.parameters())
    assert not any(p.requires_grad for p in encoder.image_tower.backbone.parameters())
    assert not any(p.requires_grad for p in encoder.generator.parameters())
    _freeze_all_but(encoder, ["image_tower"])  # the frozen backbone stays frozen
    assert not any(p.requires_grad for p in encoder.image_tower.backbone.parameters())
    # the generator's step restores the discriminator's flags as it found them
    encoder = _encoder(image={"freeze": True}).train()
    _freeze_all_but(encoder, ["decoder", "generator"])
    encoder.discriminator.compress_text.requires_grad_(False)
    assert "generator" in encoder.training_losses(_images(), CAPTIONS, epoch=0)
    assert not any(p.requires_grad for p in encoder.discriminator.compress_text.parameters())
    assert all(p.requires_grad for p in encoder.discriminator.body.parameters())


def test_a_stage_skips_the_generative_terms_it_holds_fixed():
    """A caption stage computes no imagined pictures and an imagine stage no caption loss: nothing
    would learn from them. With the embedding training, the caption term stays (it shapes it)."""
    stages = {("decoder",): ({"caption_xent"}, {"generator"}),
              ("generator", "conditioning"): ({"generator", "kl"}, {"caption_xent"}),
              ("image_tower",): ({"caption_xent"}, {"generator"})}
    for train_only, (computed, skipped) in stages.items():
        encoder = _encoder(image={"freeze": True}).train()
        _freeze_all_but(encoder, list(train_only))
        terms = encoder.training_losses(_images(), CAPTIONS, epoch=0)
        assert computed <= set(terms) and not skipped & set(terms), train_only


def test_caption_stage_options_fail_clearly(scenes, tmp_path):
    with pytest.raises(ValueError, match="select_by"):
        TrainConfig(data=str(scenes), select_by="bleu")
    with pytest.raises(ValueError, match="train_only.*list"):
        TrainConfig(data=str(scenes), train_only="decoder")
    with pytest.raises(ValueError, match="lr_step_factor"):
        TrainConfig(data=str(scenes), lr_step_factor=0.0)
    config = TrainConfig(data=str(scenes), model="gxn_tiny", out_dir=str(tmp_path / "x"), epochs=1, batch_size=16,
                         min_word_count=1, augment=False, train_only=["decodr"])
    with pytest.raises(ValueError, match="train_only.*lies under.*decoder"):
        train(config, progress=False)
    config = TrainConfig(data=str(scenes), model="gxn_tiny", out_dir=str(tmp_path / "w"), epochs=1, batch_size=16,
                         min_word_count=1, augment=False, train_only=["decoder"],
                         model_overrides={"schedule": {"warmup_epochs": 1}})
    with pytest.raises(ValueError, match="ranking only.*reaches no trained parameter"):
        train(config, progress=False)  # the warm-up epoch trains the ranking alone, and it is frozen
    config = TrainConfig(data=str(scenes), model="gxn_tiny", out_dir=str(tmp_path / "y"), epochs=1, batch_size=16,
                         min_word_count=1, augment=False, select_by="cider_d",
                         model_overrides={"caption": {"weight": 0.0}, "imagine": {"weight": 0.0}})
    with pytest.raises(ValueError, match="generates no captions"):
        train(config, progress=False)


def test_the_reconstruction_term_makes_the_imagined_picture_follow_its_text():
    """Two captions, each paired with an image of its own colour: with the L1 reconstruction term,
    a hundred steps teach the generator to draw red for "red" and blue for "blue" from the same
    noise; the term reaches the text tower."""
    torch.manual_seed(0)
    texts = ["a red circle", "a blue square"]
    colours = torch.tensor([[220, 30, 30], [30, 30, 220]], dtype=torch.uint8)
    pixels = colours[:, :, None, None].expand(2, 3, 32, 32).repeat(4, 1, 1, 1).contiguous()
    captions = texts * 4
    encoder = create_encoder("gxn_tiny", vocab=Vocabulary.build(texts), overrides={
        "schedule": {"warmup_epochs": 0}, "caption": {"weight": 0.0},
        "imagine": {"reconstruction_weight": 10.0, "kl_weight": 0.05}}).train()
    terms = encoder.training_losses(pixels, captions, epoch=0)
    assert "reconstruction" in terms
    terms["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.text_low.parameters())
    optimizer = torch.optim.Adam([p for n, p in encoder.named_parameters() if not n.startswith("discriminator")],
                                 lr=3e-3)
    for _ in range(100):
        optimizer.zero_grad()
        encoder.training_losses(pixels, captions, epoch=0)["loss"].backward()
        optimizer.step()
    imagined = encoder.eval().imagine(texts).float().mean(dim=(2, 3))  # mean RGB of each picture
    red, blue = imagined
    assert red[0] > red[2] + 60 and blue[2] > blue[0] + 60, imagined


def _pretrained_matching_encoder(**imagine):
    return _encoder(image={"freeze": True}, caption={"weight": 0.0},
                    imagine={"pretrained_match_weight": 1.0, "pretrained_match_size": 32, **imagine})


def test_pretrained_matching_needs_a_frozen_tower():
    with pytest.raises(ValueError, match="pretrained_match_weight.*image.freeze"):
        _encoder(imagine={"pretrained_match_weight": 1.0})


def test_pretrained_matching_heads_learn_in_the_discriminator_step_and_teach_the_generator():
    encoder = _pretrained_matching_encoder().train()
    heads = [*encoder.discriminator.pretrained_image.parameters(), *encoder.discriminator.pretrained_text.parameters()]
    assert {id(p) for p in heads} <= {id(p) for p in encoder.discriminator_parameters()}
    adversary = encoder.discriminator_losses(_images(), CAPTIONS, epoch=0)
    assert "real_pretrained_matching" in adversary
    adversary["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads)
    assert all(p.grad is None for p in encoder.generator.parameters())
    encoder.zero_grad(set_to_none=True)
    assert "imagined_pretrained_matching" in encoder.training_losses(_images(), CAPTIONS, epoch=0)
    # the term alone, as the generator's step computes it: it reaches the generator through the
    # frozen tower, and neither the tower nor the heads learn from it
    flags_before = [p.requires_grad for p in encoder.discriminator.parameters()]
    encoder.discriminator.requires_grad_(False)
    text = encoder.text_low(CAPTIONS).detach()
    imagined = encoder.generator(encoder.conditioning(text)[0])
    encoder._pretrained_matching(encoder._pretrained_view(imagined), text).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.generator.parameters())
    assert all(p.grad is None for p in [*encoder.image_tower.backbone.parameters(), *heads])
    assert all(flags_before)


def test_pretrained_matching_is_lowest_for_the_right_texts_once_learnt():
    """Trained on real pairs alone, the heads match each picture to its own caption: the term is
    below chance on the right pairing and above it on a shuffled one."""
    torch.manual_seed(0)
    encoder = _pretrained_matching_encoder().train()
    images = _images(4)
    optimizer = encoder.discriminator_optimizer()
    for _ in range(60):
        optimizer.zero_grad()
        encoder.discriminator_losses(images, CAPTIONS, epoch=0)["real_pretrained_matching"].backward()
        optimizer.step()
    encoder.eval()
    with torch.no_grad():
        seen, text = encoder._pretrained_view(encoder.gan_pixels(images)), encoder.text_low(CAPTIONS)
        right = encoder._pretrained_matching(seen, text)
        shuffled = encoder._pretrained_matching(seen.roll(1, dims=0), text)
    assert right < torch.log(torch.tensor(4.0)) < shuffled, (right, shuffled)


def test_leave_one_out_baseline_is_the_mean_of_the_other_samples():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 10.0, 20.0, 30.0]])  # one stage, two images, three samples each
    expected = torch.tensor([[2.5, 2.0, 1.5, 25.0, 20.0, 15.0]])
    assert torch.allclose(leave_one_out_baseline(rewards, 3), expected)
    with pytest.raises(ValueError, match="multiple"):
        leave_one_out_baseline(rewards, 4)


def test_self_critical_loss_with_several_samples_uses_the_leave_one_out_baseline(scenes, monkeypatch):
    records = select_split(load_records(scenes), "train")
    vocab = Vocabulary.build([c for r in records for c in r.captions])
    encoder = create_encoder("gxn_tiny", vocab=vocab, overrides={
        "caption": {"scst_from_epoch": 0, "scst_samples": 2, "scst_mark_end": True}}).train()
    encoder.attach_training_records(records)
    losses = encoder.training_losses(_images(), [r.captions[0] for r in records[:4]], 0, torch.arange(4))
    assert torch.isfinite(losses["scst"]) and encoder._cider.mark_end
    seen = {}

    def sample(features, regions):
        seen["features"] = features
        return [[[5], [6], [7], [8]]], log_prob

    def scores(candidates, references):
        seen["references"] = references
        return np.array([values[vocab.index[c]] for c in candidates])

    log_prob = torch.tensor([[-1.0, -2.0, -3.0, -4.0]], requires_grad=True)  # two images, two samples each
    monkeypatch.setattr(encoder.decoder, "sample", sample)
    monkeypatch.setattr(encoder.decoder, "greedy_stages", lambda f, r: pytest.fail("no greedy baseline"))
    values = {5: 1.0, 6: 3.0, 7: 0.5, 8: 2.0}
    monkeypatch.setattr(encoder._cider, "scores", scores)
    features = torch.tensor([[1.0] * 32, [2.0] * 32])
    loss, mean_reward = encoder._self_critical_loss(features, torch.zeros(2, 16, 128), torch.arange(2))
    # each image sampled twice, side by side, and each sample scored against its own image's captions
    assert torch.equal(seen["features"], features.repeat_interleave(2, dim=0))
    own = [records[0].captions, records[1].captions]
    assert [list(r) for r in seen["references"]] == [list(own[0]), list(own[0]), list(own[1]), list(own[1])]
    advantages = torch.tensor([1.0 - 3.0, 3.0 - 1.0, 0.5 - 2.0, 2.0 - 0.5])
    assert float(loss.detach()) == pytest.approx(float(-(advantages * log_prob).mean().detach()))
    assert float(mean_reward) == pytest.approx(1.625)
