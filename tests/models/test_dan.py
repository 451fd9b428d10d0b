"""m-DAN: the served inner product is S, attention weights are distributions over real words and
regions, each modality's vectors depend on it alone, checkpoints round-trip (word-level and
sentence-transformer token towers), and a tiny training run."""

from __future__ import annotations

import json

import pytest
import torch

from models import create_encoder, load_encoder
from models.encoders.dan import dual_similarity, join_steps
from models.encoders.token_towers import SentenceTokenTower
from models.training import TrainConfig, train
from models.vocab import Vocabulary, tokenize
from tests.models.tiny_models import make_tiny_sentence_model

CAPTIONS = ["a dog runs on the beach", "two men", "a small red car parked beside a tall building at night",
            "snow"]
VOCAB = Vocabulary.build(CAPTIONS)
TINY = {"image_size": 64, "image": {"pretrained": None}, "text": {"word_dim": 16},
        "attention": {"step_dim": 8, "hidden_dim": 8}}


def _dan(steps: int = 2, **overrides) -> torch.nn.Module:
    config = {**TINY, **overrides, "attention": {**TINY["attention"], "steps": steps}}
    return create_encoder("dan_lite0_gru", vocab=VOCAB, overrides=config).eval()


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_served_inner_product_is_the_mean_of_the_steps_cosines(steps):
    encoder = _dan(steps)
    images, texts = encoder.encode_image(_images()), encoder.encode_text(CAPTIONS)
    assert images.shape == (3, 8 * (steps + 1)) and texts.shape == (4, 8 * (steps + 1)) == (4, encoder.embed_dim)
    with torch.no_grad():
        image_steps = encoder.image_steps(encoder.prepare_images(_images()))[0]
        text_steps = encoder.text_steps(CAPTIONS)[0]
        expected = dual_similarity(image_steps, text_steps)
        by_hand = sum(torch.nn.functional.cosine_similarity(image_steps[k][1], text_steps[k][2], dim=0)
                      for k in range(steps + 1)) / (steps + 1)
    assert len(image_steps) == len(text_steps) == steps + 1
    assert torch.allclose(images.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(images @ texts.t(), expected, atol=1e-5)
    assert expected[1, 2] == pytest.approx(float(by_hand), abs=1e-5)


def test_join_steps_scales_each_step_to_an_equal_share():
    steps = [torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])]
    joined = join_steps(steps)
    half = 2 ** -0.5
    assert torch.allclose(joined, torch.tensor([[0.6 * half, 0.8 * half, 0.0, half]]))


def test_attention_weights_are_distributions_over_regions_and_real_words():
    encoder = _dan(2)
    grid = encoder.image_attention(_images())
    assert grid.shape == (3, 2, 2, 2)  # Lite0 at 64 px: a 2 x 2 map
    assert torch.allclose(grid.sum(dim=(2, 3)), torch.ones(3, 2), atol=1e-5)
    attention = encoder.text_attention(CAPTIONS)
    for caption, entry in zip(CAPTIONS, attention, strict=True):
        assert entry["words"] == tokenize(caption)
        assert len(entry["weights"]) == 2
        for step in entry["weights"]:
            assert len(step) == len(entry["words"]) and sum(step) == pytest.approx(1.0, abs=1e-5)
    # a short text in a batch with long ones gives no weight to the padding: same as alone
    alone = encoder.text_attention(["two men"])[0]
    assert torch.allclose(torch.tensor(attention[1]["weights"]), torch.tensor(alone["weights"]), atol=1e-6)
    assert attention[3]["weights"] == [[1.0], [1.0]]  # one word takes all the weight


def test_without_steps_there_is_no_attention_to_show():
    encoder = _dan(0)
    assert not encoder.attends and encoder.image_attention(_images()).shape == (3, 0, 2, 2)
    assert _dan(1).attends


def test_each_modality_is_encoded_from_itself_alone():
    encoder = _dan(2)
    images, others = _images(3), _images(5, seed=1)
    batch = encoder.encode_image(images)
    assert torch.allclose(encoder.encode_image(images[1:2]), batch[1:2], atol=1e-5)
    assert torch.allclose(encoder.encode_image(torch.cat([images[:1], others]))[0], batch[0], atol=1e-5)
    texts = encoder.encode_text(CAPTIONS)
    assert torch.allclose(encoder.encode_text(["two men"]), texts[1:2], atol=1e-5)  # no padding leaks in
    # in training, an image's vector is the same whichever captions share its batch
    encoder.train()
    with torch.no_grad():
        first = encoder.image_embedding(encoder.prepare_images(images))
        encoder.training_losses(images, CAPTIONS[:3], epoch=5)
        again = encoder.image_embedding(encoder.prepare_images(images))
    assert torch.allclose(first, again)


def test_training_loss_reaches_both_attentions_and_towers():
    encoder = _dan(2).train()
    terms = encoder.training_losses(_images(3), CAPTIONS[:3], epoch=5)
    assert set(terms) == {"loss", "ranking"}
    terms["loss"].backward()
    for module in (encoder.visual, encoder.textual, encoder.text_tower):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for p in encoder.image_tower.backbone.parameters())  # frozen


def test_save_and_load_round_trip(tmp_path):
    encoder = _dan(2)
    loaded = load_encoder(encoder.save(tmp_path / "dan.pt"))
    assert loaded.family == "dan" and loaded.steps == 2 and loaded.embed_dim == encoder.embed_dim
    assert torch.allclose(loaded.encode_image(_images()), encoder.encode_image(_images()), atol=1e-6)
    assert torch.allclose(loaded.encode_text(CAPTIONS), encoder.encode_text(CAPTIONS), atol=1e-6)
    assert loaded.text_attention(CAPTIONS[:1]) == encoder.text_attention(CAPTIONS[:1])


def test_token_states_from_a_sentence_transformer(tmp_path):
    folder = make_tiny_sentence_model(tmp_path / "st", [*(w for c in CAPTIONS for w in c.split()), "##s"])
    text = {"kind": "sentence_transformer", "path": str(folder), "freeze": True, "hidden_dim": 12}
    encoder = create_encoder("dan_lite0_minilm", overrides={**TINY, "text": text}).eval()
    assert isinstance(encoder.text_tower, SentenceTokenTower)
    direct = encoder.encode_text(CAPTIONS)
    attention = encoder.text_attention(["a dog runs", "snow"])
    assert attention[0]["words"] == ["a", "dog", "runs"] and attention[1]["words"] == ["snow"]
    # memoised from a cache file, the token states give the same vectors
    fresh = load_encoder(encoder.save(tmp_path / "dan_st.pt"))
    fresh.text_tower.precompute(CAPTIONS, tmp_path / "cache", progress=False)
    again = load_encoder(tmp_path / "dan_st.pt")
    again.text_tower.precompute(CAPTIONS, tmp_path / "cache", progress=False)  # read back from the file
    assert list((tmp_path / "cache").glob("tokens-*.pt"))
    assert torch.allclose(fresh.encode_text(CAPTIONS), direct, atol=1e-3)  # states are kept in fp16
    assert torch.allclose(again.encode_text(CAPTIONS), fresh.encode_text(CAPTIONS), atol=1e-6)
    encoder.train()
    encoder.training_losses(_images(2), CAPTIONS[:2], epoch=5)["loss"].backward()
    assert all(p.grad is None for p in encoder.text_tower.transformer.parameters())
    assert encoder.text_tower.head[0].weight.grad is not None


def test_word_pieces_are_shown_as_words_with_summed_weights():
    words, weights = SentenceTokenTower.group_pieces(["snow", "##board", "##ing", "fun"],
                                                     torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    assert words == ["snowboarding", "fun"]
    assert torch.allclose(weights, torch.tensor([[0.6, 0.4]]))


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match=r"embed_dim is \(attention.steps \+ 1\) \* attention.step_dim = 24"):
        _dan(2, embed_dim=1024)
    with pytest.raises(ValueError, match="unknown key 'attention.stpes'"):
        create_encoder("dan_lite0_gru", vocab=VOCAB, overrides={**TINY, "attention": {"stpes": 1}})
    with pytest.raises(ValueError, match="vocabulary"):
        create_encoder("dan_lite0_gru", overrides=TINY)


def test_a_tiny_training_run(scenes, tmp_path):
    config = TrainConfig(data=str(scenes), model="dan_lite0_gru", out_dir=str(tmp_path / "run"), epochs=2,
                         batch_size=16, lr=1e-3, min_word_count=1, threads=2, feature_views=1,
                         model_overrides={**TINY, "attention": {"steps": 1, "step_dim": 16, "hidden_dim": 16}})
    result = train(config, progress=False)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert len(history) == 2 and all(h["val"]["rsum"] > 0 for h in history)
    encoder = load_encoder(result.best_checkpoint)
    assert encoder.family == "dan" and encoder.attends


def test_region_dropout_acts_in_training_only():
    encoder = _dan(1, image={"pretrained": None, "dropout": 0.5})
    pixels = encoder.prepare_images(_images())
    with torch.no_grad():
        assert torch.equal(encoder.image_embedding(pixels), encoder.image_embedding(pixels))
        encoder.train()
        assert not torch.equal(encoder.image_embedding(pixels), encoder.image_embedding(pixels))
