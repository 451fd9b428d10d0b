"""The keys an encoder config may hold, section by section, with the type of each value, as
pydantic models that forbid any other key: a misspelt key ("dropuot") or a value of the wrong kind
("dropout": "high") fails with its path and where the config came from, instead of silently
falling back to a default or failing deep inside a tower. The families read their sections as
dicts and keep their own defaults; these models are the one list of what those dicts may hold."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

Int = int | None
Real = float | None
Flag = bool | None
Text = str | None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _section(name: str, **fields: Any) -> type[_Section]:
    """A section model accepting exactly these keys, each of its type or absent (None)."""
    return create_model(name, __base__=_Section, **{key: (kind, None) for key, kind in fields.items()})


# image: the backbone and its projection (hidden: VSE's two-layer projection; model, model_cfg: open_clip)
ImageSection = _section("ImageSection", backbone=Text, pretrained=Text, freeze=Flag, dropout=Real, hidden=Int,
                        train_last_blocks=Int, backbone_lr_scale=Real, model=Text, model_cfg=dict | None)
# text: gru | lstm | sentence_transformer | textcnn (blocks, channels, position_shift, word_vectors)
TextSection = _section("TextSection", kind=Text, word_dim=Int, hidden_dim=Int, max_length=Int, layers=Int, rnn=Text,
                       path=Text, freeze=Flag, dropout=Real, blocks=list[int] | None, channels=list[int] | None,
                       position_shift=Flag, word_vectors=Text)
LossSection = _section("LossSection", kind=Text, margin=Real, warmup_epochs=Int, anneal_epochs=Int, temperature=Real,
                       weight=Real)
InstanceLossSection = _section("InstanceLossSection", weight=Real, dropout=Real, classes=Int)     # Dual-Path
StagesSection = _section("StagesSection", stage1_epochs=Int, stage1_backbone=Text)                # Dual-Path
CaptionSection = _section("CaptionSection", attention_dim=Int, beam_width=Int, hidden_dim=Int, max_length=Int,
                          regions_from=Text, scst_from_epoch=Int, scst_weight=Real, scst_samples=Int,
                          scst_mark_end=Flag, weight=Real, word_dim=Int, decoder=Text, dropout=Real,
                          fine_stages=Int, language_cnn_channels=Int, history=Int, length_alpha=Real)  # GXN
ImagineSection = _section("ImagineSection", condition_dim=Int, discriminator_lr=Real, discriminator_width=Int,
                          generator_width=Int, image_size=Int, kl_weight=Real, noise_dim=Int, weight=Real,
                          reconstruction_weight=Real, match_weight=Real, match_temperature=Real,
                          pretrained_match_weight=Real, pretrained_match_size=Int, translation=Real)  # GXN
ScheduleSection = _section("ScheduleSection", warmup_epochs=Int)                                   # GXN
AttentionSection = _section("AttentionSection", steps=Int, step_dim=Int, hidden_dim=Int)           # DAN


class EncoderConfig(_Section):
    family: str
    embed_dim: Int = None
    image_size: Int = None
    image: ImageSection | None = None
    text: TextSection | None = None
    loss: LossSection | None = None
    instance_loss: InstanceLossSection | None = None   # Dual-Path
    stages: StagesSection | None = None                # Dual-Path
    caption: CaptionSection | None = None              # GXN
    imagine: ImagineSection | None = None              # GXN
    schedule: ScheduleSection | None = None            # GXN
    attention: AttentionSection | None = None          # DAN
    model: Text = None                                 # open_clip
    model_cfg: dict | None = None
    pretrained: Text = None
    members: Any = None                                # ensembles: each member's own config
    lambda_: Real = Field(None, alias="lambda")         # GXN's weight of the low level (a Python keyword)


def check_encoder_config(config: dict[str, Any], source: str) -> EncoderConfig:
    """Parse `config`; an unknown key raises ValueError naming its path and `source`."""
    try:
        return EncoderConfig.model_validate(config)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            path = ".".join(map(str, problem["loc"]))
            problems.append(f"unknown key {path!r}" if problem["type"] == "extra_forbidden"
                            else f"{path}: {problem['msg']}")
        raise ValueError(f"{source}: encoder config: {'; '.join(problems)}") from None
