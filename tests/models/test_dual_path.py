"""Dual-Path: text CNN shapes, the shared instance classifier, the two stages, position shift,
word vectors, checkpoints and a tiny end-to-end training run."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from models import create_encoder, load_encoder
from models.data import load_records
from models.encoders.text_cnn import Bottleneck1d, TextCNNTower, position_shift
from models.losses import InstanceLoss
from models.training import TrainConfig, train
from models.vocab import Vocabulary
from models.word_vectors import initialise_embedding, read_text_vectors

CAPTIONS = ["a small red circle", "a large blue square to the left of a green star", "a yellow cross",
            "two green stars"]
VOCAB = Vocabulary.build(CAPTIONS)


def _encoder(classes: int = 4, **overrides):
    return create_encoder("dual_path_tiny", vocab=VOCAB, overrides={"instance_loss": {"classes": classes},
                                                                     **overrides})


def _images(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_text_cnn_shapes_and_normalised_embeddings():
    tower = TextCNNTower(VOCAB, out_dim=24, word_dim=8, max_length=12, channels=(16, 32, 64), blocks=(1, 2, 1))
    tower.eval()
    assert tower.tokens(CAPTIONS).shape == (4, 12)
    assert tower(CAPTIONS).shape == (4, 24) and tower([]).shape == (0, 24)
    block = Bottleneck1d(16, 32, stride=2)
    assert block(torch.randn(2, 16, 12)).shape == (2, 32, 6) and block(torch.randn(2, 16, 7)).shape == (2, 32, 4)
    encoder = _encoder().eval()
    images, texts = encoder.encode_image(_images()), encoder.encode_text(CAPTIONS)
    assert images.shape == (4, 32) and texts.shape == (4, 32)
    assert torch.allclose(images.norm(dim=1), torch.ones(4)) and torch.allclose(texts.norm(dim=1), torch.ones(4))
    assert encoder.unknown_words("a purple circle") == ["purple"]


def test_instance_loss_on_a_hand_made_case():
    loss = InstanceLoss(dim=2, classes=2)
    with torch.no_grad():
        loss.classifier.weight.copy_(torch.eye(2))
    images = torch.tensor([[2.0, 0.0], [0.0, 1.0]])   # logits = the features themselves
    texts = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    image_term, text_term = (t.detach() for t in loss(images, texts, torch.tensor([0, 1])))
    # image rows: -log softmax([2, 0])[0] = log(1 + e^-2); -log softmax([0, 1])[1] = log(1 + e^-1)
    assert float(image_term) == pytest.approx((math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2)
    # text rows: uniform logits -> log 2; logits [3, 0] for class 1 -> log(1 + e^3)
    assert float(text_term) == pytest.approx((math.log(2) + math.log(1 + math.exp(3))) / 2)


def test_one_classifier_is_shared_by_both_paths():
    encoder = _encoder().train()
    classifiers = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 4]
    assert classifiers == [encoder.instance_loss.classifier]  # exactly one, and no bias of its own per path
    images, texts = encoder.image_embedding(_images()), encoder.text_embedding(CAPTIONS)
    image_term, text_term = encoder.instance_loss(images, texts, torch.arange(4))
    weight = encoder.instance_loss.classifier.weight
    from_image = torch.autograd.grad(image_term, weight, retain_graph=True)[0]
    from_text = torch.autograd.grad(text_term, weight, retain_graph=True)[0]
    assert from_image.abs().sum() > 0 and from_text.abs().sum() > 0  # the same W learns from both
    # ...and each term reaches only its own path (plus W).
    text_grads = torch.autograd.grad(image_term, list(encoder.text_tower.parameters()), allow_unused=True)
    assert all(g is None for g in text_grads)


def test_stage_one_freezes_the_image_backbone_and_stage_two_trains_everything():
    encoder = _encoder().train()
    backbone = encoder.image_tower.backbone
    losses = encoder.training_losses(_images(), CAPTIONS, epoch=0, image_ids=torch.arange(4))
    assert "ranking" not in losses and {"instance_image", "instance_text"} <= set(losses)
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training
    losses["loss"].backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert encoder.image_tower.project.weight.grad is not None and encoder.text_tower.embed.weight.grad is not None
    assert encoder.describe_epoch(0)["stage"].startswith("I: instance loss, image backbone frozen")
    encoder.zero_grad(set_to_none=True)
    losses = encoder.training_losses(_images(), CAPTIONS, epoch=1, image_ids=torch.arange(4))
    assert "ranking" in losses and backbone.training
    losses["loss"].backward()
    assert all(p.grad is not None for p in backbone.parameters())
    assert encoder.describe_epoch(1)["stage"] == "II: instance + ranking loss, all trained"


def test_ablations_and_bad_configs():
    ranking_only = _encoder(instance_loss={"weight": 0.0}, stages={"stage1_epochs": 0})
    losses = ranking_only.training_losses(_images(), CAPTIONS, epoch=0)  # no image ids needed
    assert set(losses) == {"loss", "ranking"}
    with pytest.raises(ValueError, match="Stage I trains with the instance loss alone"):
        _encoder(instance_loss={"weight": 0.0})
    with pytest.raises(ValueError, match="instance_loss.classes"):
        create_encoder("dual_path_tiny", vocab=VOCAB)
    with pytest.raises(ValueError, match="needs a vocabulary"):
        create_encoder("dual_path_tiny", overrides={"instance_loss": {"classes": 4}})
    with pytest.raises(ValueError, match="image's index"):
        _encoder().training_losses(_images(), CAPTIONS, epoch=0)


def test_position_shift_keeps_the_words_in_order():
    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    lengths = torch.tensor([3, 2])
    offsets = set()
    for seed in range(20):
        shifted = position_shift(tokens, lengths, max_length=8, rng=random.Random(seed))
        assert shifted.shape == (2, 8)
        for row, words in ((0, [5, 6, 7]), (1, [8, 9])):
            positions = shifted[row].nonzero().flatten()
            assert shifted[row, positions].tolist() == words  # same words, same order, none dropped
            assert positions.tolist() == list(range(int(positions[0]), int(positions[0]) + len(words)))
            offsets.add(int(positions[0]))
    assert len(offsets) > 3  # the offset really varies
    full = position_shift(torch.arange(1, 9).view(1, 8), torch.tensor([8]), max_length=8)
    assert full.tolist() == [list(range(1, 9))]  # a full-length caption cannot move


def test_save_and_load_round_trip(tmp_path):
    encoder = _encoder().eval()
    loaded = load_encoder(encoder.save(tmp_path / "dual.pt"))
    assert loaded.family == "dual_path" and loaded.config["instance_loss"]["classes"] == 4
    assert torch.allclose(loaded.encode_image(_images()), encoder.encode_image(_images()), atol=1e-6)
    assert torch.allclose(loaded.encode_text(CAPTIONS), encoder.encode_text(CAPTIONS), atol=1e-6)
    assert torch.equal(loaded.instance_loss.classifier.weight, encoder.instance_loss.classifier.weight)


def test_word_vectors_from_a_text_file(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("red 1 0 0 0\ncircle 0 2 0 0\nzebra 1 1 1 1\n")
    vectors = read_text_vectors(glove, wanted=set(VOCAB.words))
    assert set(vectors) == {"red", "circle"}
    w2v = tmp_path / "w2v.txt"
    w2v.write_text("2 4\nred 1 0 0 0\nblue 0 0 3 0\n")
    assert set(read_text_vectors(w2v)) == {"red", "blue"}
    embedding = torch.nn.Embedding(len(VOCAB), 4)
    assert initialise_embedding(embedding, VOCAB, vectors) == 2
    red = embedding.weight[VOCAB.index["red"]].detach()
    assert red[0] > 0 and torch.allclose(red[1:], torch.zeros(3))  # the direction kept, scaled to the layer
    bad = tmp_path / "bad.txt"
    bad.write_text("red 1 0\nblue 1 0 0\n")
    with pytest.raises(ValueError, match="bad.txt:2: 3 values where earlier lines had 2"):
        read_text_vectors(bad)
    with pytest.raises(ValueError, match="3-d but the embedding is 4-d"):
        initialise_embedding(embedding, VOCAB, {"red": np.ones(3, np.float32)})


def test_word2vec_trained_on_the_captions_starts_the_embedding():
    pytest.importorskip("gensim", reason="gensim (the word2vec extra) is not installed")
    encoder = _encoder(text={"word_vectors": "word2vec"})
    before = encoder.text_tower.embed.weight.detach().clone()
    records = [type("Record", (), {"captions": (c,)})() for c in CAPTIONS * 20]
    encoder.prepare_for_training(records)
    after = encoder.text_tower.embed.weight.detach()
    changed = [w for w in VOCAB.words[4:] if not torch.equal(before[VOCAB.index[w]], after[VOCAB.index[w]])]
    assert changed == VOCAB.words[4:]  # every caption word got its word2vec vector
    assert torch.equal(before[:4], after[:4])  # padding and the special tokens are left alone


def test_training_runs_both_stages_and_logs_them(scenes, tmp_path, capsys):
    glove = tmp_path / "vectors.txt"
    glove.write_text("red " + " ".join(["0.5"] * 16) + "\n")
    config = TrainConfig.from_dict({
        "data": str(scenes), "model": "dual_path_tiny", "out_dir": str(tmp_path / "run"), "epochs": 2,
        "batch_size": 16, "lr": 1e-3, "image_size": 32, "hflip": False, "cache_dir": None, "warmup_steps": 0,
        "workers": 1, "model_overrides": {"text": {"word_vectors": str(glove)}}})
    result = train(config, progress=True)
    assert [h["stage"][:3] for h in result.history] == ["I: ", "II:"]
    assert "word vectors from" in capsys.readouterr().out
    logged = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "ranking" in logged["history"][1]["loss_terms"] and "ranking" not in logged["history"][0]["loss_terms"]
    encoder = load_encoder(result.best_checkpoint)
    train_count = sum(r.split == "train" for r in load_records(scenes))
    assert encoder.config["instance_loss"]["classes"] == train_count


def test_warm_start_on_another_training_set_restarts_only_the_classifier(scenes, tmp_path):
    source = create_encoder("dual_path_tiny", vocab=Vocabulary.build(
        c for r in load_records(scenes) for c in r.captions), overrides={"instance_loss": {"classes": 7}})
    checkpoint = source.save(tmp_path / "source.pt")
    config = TrainConfig.from_dict({
        "data": str(scenes), "model": "dual_path_tiny", "out_dir": str(tmp_path / "run"), "epochs": 1,
        "batch_size": 16, "image_size": 32, "hflip": False, "cache_dir": None, "workers": 1,
        "init_from": str(checkpoint)})
    from models.training.trainer import _new_encoder

    records = load_records(scenes)
    encoder = _new_encoder(config, records)
    assert encoder.config["instance_loss"]["classes"] == sum(r.split == "train" for r in records)
    assert torch.equal(encoder.text_tower.embed.weight, source.text_tower.embed.weight)  # the rest is kept
