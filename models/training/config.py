"""Training configuration: one typed dataclass, read from TOML and overridden from the CLI."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SELECTION_METRICS = ("rsum", "bleu4", "cider_d")


@dataclass
class TrainConfig:
    data: str = ""                       # Karpathy JSON, a folder holding one, or an image folder
    model: str = "vsepp_resnet18_gru"    # registry name (models/configs/NAME.json)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None         # start from this checkpoint's weights (fine-tuning, loss switch)
    out_dir: str = "runs/default"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"          # cosine | step | constant
    lr_step_epochs: list[int] = field(default_factory=list)  # for "step": multiply by lr_step_factor at these
    lr_step_factor: float = 0.1
    train_only: list[str] = field(default_factory=list)  # parameter-name prefixes that train; the rest stays fixed
    select_by: str = "rsum"              # which epoch is model_best: rsum | bleu4 | cider_d (greedy val captions)
    warmup_steps: int = 100              # linear learning-rate warm-up
    grad_clip: float = 2.0
    image_size: int | None = None        # overrides the model config's image_size
    augment: bool = True                 # random crop (from a 1/8 larger image)
    hflip: bool = True                   # off where captions say "left"/"right" (synthetic scenes)
    min_word_count: int = 1
    word_dropout: float = 0.0            # drop each caption word with this chance (training text only)
    seed: int = 0
    val_split: str = "val"
    val_max_images: int | None = None
    epoch_pairs: str = "one_per_image"   # one_per_image (a random caption each) | all_captions
    cache_features: bool = True          # frozen image backbone: compute its features once (off: every batch)
    feature_views: int = 6               # frozen image backbone: views cached per training image (1-10)
    backbone_runtime: str = "openvino"   # how a frozen backbone's features are computed (torch | openvino)
    time_budget_minutes: float | None = None  # stop (and evaluate) when this much training time is spent
    cache_dir: str | None = ".cache/imgsearch"
    workers: int = 2
    threads: int | None = None
    device: str = "auto"                 # auto (CUDA when present) | cpu | cuda | cuda:1 ...

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def __post_init__(self) -> None:
        self._check_types()
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"lr_schedule must be cosine, step or constant, not {self.lr_schedule!r}")
        if not isinstance(self.train_only, list) or not all(isinstance(p, str) for p in self.train_only):
            raise ValueError(f"train_only = {self.train_only!r}: expected a list of module names, e.g. [\"decoder\"]")
        if self.lr_step_factor <= 0:
            raise ValueError(f"lr_step_factor must be > 0, not {self.lr_step_factor}")
        if self.select_by not in SELECTION_METRICS:
            raise ValueError(f"select_by must be one of {', '.join(SELECTION_METRICS)}, not {self.select_by!r}")
        if self.epoch_pairs not in ("one_per_image", "all_captions"):
            raise ValueError(f"epoch_pairs must be one_per_image or all_captions, not {self.epoch_pairs!r}")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), not {self.word_dropout}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (ranking needs negatives)")

    def _check_types(self) -> None:
        """TOML values of the wrong type (epochs = "3") fail here, naming the option."""
        for option in dataclasses.fields(self):
            value, default = getattr(self, option.name), option.default
            if value is None or default is dataclasses.MISSING or default is None:
                continue
            expected = (int, float) if isinstance(default, float) else type(default)
            if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
                raise ValueError(f"training option {option.name} = {value!r}: expected {type(default).__name__}")

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: training config not found")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: invalid TOML ({error})") from error
        try:
            config = cls.from_dict(values, **overrides)
            config.check_model_overrides()
        except (ValueError, TypeError) as error:  # an unknown or mistyped option: say which file
            raise ValueError(f"{path}: {error}") from error
        return config

    def check_model_overrides(self) -> None:
        """A misspelt key in `model_overrides` fails now, not silently at training time."""
        from models.encoders.config_schema import check_encoder_config
        from models.encoders.registry import get_encoder_config, list_encoders, merge_config

        if self.model_overrides and self.model in list_encoders():
            check_encoder_config(merge_config(get_encoder_config(self.model), self.model_overrides),
                                 f"model_overrides on {self.model}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides: Any) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            close = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
            hints = [f"{u} (did you mean {close[u][0]}?)" if close[u] else u for u in unknown]
            raise ValueError(f"unknown training option(s): {', '.join(hints)}")
        merged = {**values, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**merged)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
