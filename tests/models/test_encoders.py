"""Encoders: one interface, the registry, checkpoints, pretrained loading, text towers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from models import CheckpointError, PretrainedUnavailableError, create_encoder, list_encoders, load_encoder
from models.encoders.registry import get_encoder_config, needs_vocabulary
from models.vocab import Vocabulary
from tests.models.tiny_models import make_tiny_sentence_model

CAPTIONS = ["a small red circle", "a large blue square to the left of a green star", "a yellow cross"]
VOCAB = Vocabulary.build(CAPTIONS)
TINY = {"embed_dim": 32, "image_size": 32, "text": {"word_dim": 16}}


def _images(n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _check_interface(encoder, images=None) -> None:
    encoder.eval()
    images = _images() if images is None else images
    image_emb, text_emb = encoder.encode_image(images), encoder.encode_text(CAPTIONS)
    assert image_emb.shape == (len(images), encoder.embed_dim) and text_emb.shape == (3, encoder.embed_dim)
    assert torch.allclose(image_emb.norm(dim=1), torch.ones(len(images)), atol=1e-5)
    assert torch.allclose(text_emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert isinstance(encoder.name, str) and encoder.name


def test_registry_lists_configs_and_rejects_unknown_names():
    names = list_encoders()
    assert {"vse_resnet18_gru", "vsepp_resnet18_gru", "vsepp_resnet18_minilm", "openclip_vit_b32"} <= set(names)
    assert get_encoder_config("vsepp_resnet18_gru")["loss"]["kind"] == "max_hinge"
    assert get_encoder_config("vse_resnet18_gru")["loss"]["kind"] == "sum_hinge"
    with pytest.raises(ValueError, match="unknown encoder 'nope'"):
        create_encoder("nope")
    with pytest.raises(ValueError, match="unknown family 'martian'"):
        create_encoder("x", config={"family": "martian", "embed_dim": 4})


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_vse_interface_and_round_trip(tmp_path, rnn):
    encoder = create_encoder("vse_tiny_gru", vocab=VOCAB, overrides={**TINY, "text": {"kind": rnn, "word_dim": 16}})
    _check_interface(encoder)
    path = encoder.save(tmp_path / "enc.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["vocab"] == VOCAB.words and payload["config"]["text"]["kind"] == rnn
    loaded = load_encoder(path)
    assert loaded.name == "vse_tiny_gru" and loaded.embed_dim == 32 and loaded.image_size == 32
    assert torch.allclose(loaded.encode_image(_images()), encoder.encode_image(_images()), atol=1e-6)
    assert torch.allclose(loaded.encode_text(CAPTIONS), encoder.encode_text(CAPTIONS), atol=1e-6)
    assert loaded.unknown_words("a purple circle") == ["purple"] and loaded.knows_word("red")


def test_vse_two_layer_image_projection_and_its_training_stage(tmp_path):
    encoder = create_encoder("vsepp_resnet18_gru", vocab=VOCAB, overrides={
        **TINY, "image": {"backbone": "resnet18", "hidden": 24}, "loss": {"warmup_epochs": 1, "anneal_epochs": 0}})
    assert [layer.out_features for layer in encoder.image_tower.project if hasattr(layer, "out_features")] == [24, 32]
    _check_interface(encoder)
    loaded = load_encoder(encoder.save(tmp_path / "mlp.pt"))
    assert torch.allclose(loaded.encode_image(_images()), encoder.encode_image(_images()), atol=1e-6)
    assert [encoder.describe_epoch(e)["stage"] for e in (0, 1)] == ["sum of hinges (warm-up)", "hardest negatives"]
    assert create_encoder("vse_tiny_gru", vocab=VOCAB, overrides=TINY).describe_epoch(0) == {}


def test_images_as_pil_tensor_or_other_size_agree():
    encoder = create_encoder("vse_tiny_gru", vocab=VOCAB, overrides=TINY).eval()
    pixels = _images(2)
    pil = [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]
    assert torch.allclose(encoder.encode_image(pil), encoder.encode_image(pixels), atol=1e-5)
    assert encoder.encode_image(pixels.float() / 255).shape == (2, 32)
    big = torch.nn.functional.interpolate(pixels.float(), size=(64, 64)).to(torch.uint8)
    assert encoder.encode_image(big).shape == (2, 32)  # resized to the encoder's image size
    with pytest.raises(ValueError, match=r"expected images shaped \(N, 3, H, W\)"):
        encoder.encode_image(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="list of texts"):
        encoder.encode_text("a single string")


def test_training_losses_give_gradients_everywhere():
    encoder = create_encoder("vse_tiny_gru", vocab=VOCAB, overrides=TINY).train()
    losses = encoder.training_losses(_images(), CAPTIONS, epoch=0)
    losses["loss"].backward()
    assert losses["loss"].item() > 0
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval_mode():
    encoder = create_encoder("vse_tiny_gru", vocab=VOCAB, overrides={**TINY, "image": {"freeze": True}}).train()
    encoder.training_losses(_images(), CAPTIONS, epoch=0)["loss"].backward()
    backbone = encoder.image_tower.backbone
    assert not backbone.training and all(p.grad is None for p in backbone.parameters())
    assert encoder.image_tower.project.weight.grad is not None


def test_resnet_loads_local_weights_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    encoder = create_encoder("vse_tiny_gru", vocab=VOCAB,
                             overrides={**TINY, "image": {"pretrained": str(tmp_path / "resnet18.pth")}})
    assert torch.equal(encoder.image_tower.backbone.conv1.weight, reference.conv1.weight)
    with pytest.raises(PretrainedUnavailableError, match="not found"):
        create_encoder("vse_tiny_gru", vocab=VOCAB, overrides={**TINY, "image": {"pretrained": "/no/such.pth"}})


def test_unreachable_pretrained_weights_fail_with_a_clear_message():
    with pytest.raises(PretrainedUnavailableError, match="pretrained weights 'openai' are not available"):
        create_encoder("openclip_vit_b32")


def test_openclip_visual_tower_in_vse():
    encoder = create_encoder("vse_openclip_vit_tiny", vocab=VOCAB,
                             overrides={"embed_dim": 32, "image_size": 64, "text": {"word_dim": 16}})
    _check_interface(encoder, torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))


def test_openclip_encoder_round_trip_and_local_checkpoint(tmp_path):
    import open_clip

    encoder = create_encoder("openclip_vit_tiny")
    _check_interface(encoder, torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert not needs_vocabulary(encoder.config) and encoder.unknown_words("zebra quux") == []
    loaded = load_encoder(encoder.save(tmp_path / "clip.pt"))
    assert torch.allclose(loaded.encode_text(CAPTIONS), encoder.encode_text(CAPTIONS), atol=1e-5)
    # `pretrained=` a local open_clip checkpoint file: the real loading path, with weights made here.
    torch.save(encoder.model.state_dict(), tmp_path / "weights.pt")
    assert "imgsearch-vit-tiny" in open_clip.list_models()
    from_file = create_encoder("openclip_vit_tiny", overrides={"pretrained": str(tmp_path / "weights.pt")})
    assert torch.allclose(from_file.encode_text(CAPTIONS), encoder.encode_text(CAPTIONS), atol=1e-5)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_encoder(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an imgsearch encoder"):
        load_encoder(tmp_path / "other.pt")


# --- sentence-transformers text tower, with a tiny model made here ---------------------------
@pytest.fixture(scope="module")
def tiny_sentence_model(tmp_path_factory) -> Path:
    return make_tiny_sentence_model(tmp_path_factory.mktemp("tiny-st"), (w for c in CAPTIONS for w in c.split()))


@pytest.mark.parametrize("freeze", [True, False])
def test_sentence_transformer_tower(tmp_path, tiny_sentence_model, freeze):
    overrides = {**TINY, "text": {"kind": "sentence_transformer", "path": str(tiny_sentence_model),
                                  "freeze": freeze, "hidden_dim": 24}}
    encoder = create_encoder("vse_resnet18_minilm", overrides=overrides)
    _check_interface(encoder)
    encoder.train()
    encoder.training_losses(_images(), CAPTIONS, epoch=0)["loss"].backward()
    transformer_grads = [p.grad for p in encoder.text_tower.transformer.parameters()]
    assert all(g is None for g in transformer_grads) if freeze else any(g is not None for g in transformer_grads)
    assert encoder.unknown_words("a red zebra") == ["zebra"]
    loaded = load_encoder(encoder.save(tmp_path / "st.pt"))  # self-contained: tokenizer files inside
    encoder.eval()
    assert torch.allclose(loaded.encode_text(CAPTIONS), encoder.encode_text(CAPTIONS), atol=1e-5)


def test_missing_sentence_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local sentence-transformers folder"):
        create_encoder("vse_resnet18_minilm", overrides={**TINY, "text": {"path": str(tmp_path)}})


@pytest.mark.parametrize("name", ["dual_path_tiny", "gxn_tiny"])
def test_dual_path_and_gxn_take_a_sentence_transformer_text_path(tmp_path, tiny_sentence_model, name):
    text = {"kind": "sentence_transformer", "path": str(tiny_sentence_model), "freeze": True, "hidden_dim": 24}
    config = {**get_encoder_config(name), "text": text}
    if name == "dual_path_tiny":
        config["instance_loss"] = {"weight": 1.0, "classes": 3}
    assert needs_vocabulary(config) == (name == "gxn_tiny")  # GXN's caption decoder still writes words
    encoder = create_encoder(name, vocab=VOCAB if name == "gxn_tiny" else None, config=config)
    _check_interface(encoder)
    if name == "gxn_tiny":  # two heads (abstract, concrete) over one copy of the sentence encoder
        assert encoder.text_high.transformer is encoder.text_low.transformer
    encoder.train()
    encoder.training_losses(_images(), CAPTIONS, epoch=2, image_ids=torch.arange(3))["loss"].backward()
    encoder.eval()
    loaded = load_encoder(encoder.save(tmp_path / "st.pt"))
    assert torch.allclose(loaded.encode_text(CAPTIONS), encoder.encode_text(CAPTIONS), atol=1e-5)
    if name == "gxn_tiny":
        assert loaded.text_high.transformer is loaded.text_low.transformer
        assert loaded.vocabulary_words() == VOCAB.words


def test_a_misspelt_encoder_config_key_fails_naming_it_and_where_it_came_from(tmp_path):
    from models.training import TrainConfig

    with pytest.raises(ValueError, match=r"vse_tiny_gru\.json with overrides: encoder config: unknown key "
                                         r"'image\.dropuot'"):
        create_encoder("vse_tiny_gru", vocab=VOCAB, overrides={"image": {"dropuot": 0.1}})
    with pytest.raises(ValueError, match=r"image\.dropout: Input should be a valid number"):
        create_encoder("vse_tiny_gru", vocab=VOCAB, overrides={"image": {"dropout": "high"}})
    with pytest.raises(ValueError, match=r"unknown key 'lossy'"):
        create_encoder("custom", vocab=VOCAB, config={"family": "vse", "embed_dim": 8, "lossy": {}})
    config = tmp_path / "run.toml"
    config.write_text('model = "vsepp_resnet18_gru"\nmodel_overrides = { text = { word_dimm = 64 } }\n')
    with pytest.raises(ValueError, match=r"run\.toml: model_overrides on vsepp_resnet18_gru: encoder config: "
                                         r"unknown key 'text\.word_dimm'"):
        TrainConfig.from_file(config)
    from models.encoders.config_schema import check_encoder_config

    for name in list_encoders():  # every config in the registry parses
        assert check_encoder_config(get_encoder_config(name), name).family == get_encoder_config(name)["family"]
