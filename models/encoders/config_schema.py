"""The keys an encoder config may hold, section by section, as pydantic models that forbid any
other key: a misspelt key ("dropuot") fails with its path and where the config came from instead
of silently falling back to its default. The families still read their sections as dicts; these
models are the one list of what those dicts may contain (values are checked by the families)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageSection(_Section):
    backbone: Any = None
    pretrained: Any = None
    freeze: Any = None
    dropout: Any = None
    hidden: Any = None               # two-layer projection (VSE)
    train_last_blocks: Any = None
    backbone_lr_scale: Any = None
    model: Any = None                # open_clip visual tower
    model_cfg: Any = None


class TextSection(_Section):
    kind: Any = None                 # gru | lstm | sentence_transformer | textcnn | openclip
    word_dim: Any = None
    hidden_dim: Any = None
    max_length: Any = None
    layers: Any = None
    rnn: Any = None
    path: Any = None                 # sentence-transformer folder or package
    freeze: Any = None
    dropout: Any = None
    blocks: Any = None               # TextCNN
    channels: Any = None
    position_shift: Any = None
    word_vectors: Any = None


class LossSection(_Section):
    kind: Any = None                 # sum_hinge | max_hinge | infonce
    margin: Any = None
    warmup_epochs: Any = None
    anneal_epochs: Any = None
    temperature: Any = None
    weight: Any = None


class InstanceLossSection(_Section):
    weight: Any = None
    dropout: Any = None
    classes: Any = None


class StagesSection(_Section):
    stage1_epochs: Any = None
    stage1_backbone: Any = None


class CaptionSection(_Section):
    attention_dim: Any = None
    beam_width: Any = None
    hidden_dim: Any = None
    max_length: Any = None
    regions_from: Any = None
    scst_from_epoch: Any = None
    scst_weight: Any = None
    weight: Any = None
    word_dim: Any = None


class ImagineSection(_Section):
    condition_dim: Any = None
    discriminator_lr: Any = None
    discriminator_width: Any = None
    generator_width: Any = None
    image_size: Any = None
    kl_weight: Any = None
    noise_dim: Any = None
    weight: Any = None


class ScheduleSection(_Section):
    warmup_epochs: Any = None


class EncoderConfig(_Section):
    family: str
    embed_dim: Any = None
    image_size: Any = None
    image: ImageSection | None = None
    text: TextSection | None = None
    loss: LossSection | None = None
    instance_loss: InstanceLossSection | None = None   # Dual-Path
    stages: StagesSection | None = None                # Dual-Path
    caption: CaptionSection | None = None              # GXN
    imagine: ImagineSection | None = None              # GXN
    schedule: ScheduleSection | None = None            # GXN
    model: Any = None                                  # open_clip
    model_cfg: Any = None
    pretrained: Any = None
    members: Any = None                                # ensembles: each member's own config
    # GXN's weight of the low level ("lambda" is a Python keyword, hence the alias).
    lambda_: Any = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @classmethod
    def field_for(cls, key: str) -> str:
        return "lambda_" if key == "lambda" else key


def check_encoder_config(config: dict[str, Any], source: str) -> EncoderConfig:
    """Parse `config`; an unknown key raises ValueError naming its path and `source`."""
    values = {EncoderConfig.field_for(k): v for k, v in config.items()}
    try:
        return EncoderConfig.model_validate(values)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            path = ".".join("lambda" if p == "lambda_" else str(p) for p in problem["loc"])
            problems.append(f"unknown key {path!r}" if problem["type"] == "extra_forbidden"
                            else f"{path}: {problem['msg']}")
        raise ValueError(f"{source}: encoder config: {'; '.join(problems)}") from None
