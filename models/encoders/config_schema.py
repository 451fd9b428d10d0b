"""The keys an encoder config may hold, section by section, as pydantic models that forbid any
other key: a misspelt key ("dropuot") fails with its path and where the config came from instead
of silently falling back to its default. The families still read their sections as dicts; these
models are the one list of what those dicts may contain (values are checked by the families)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _section(name: str, keys: str) -> type[_Section]:
    """A section model accepting exactly `keys` (space-separated), each any value or absent."""
    return create_model(name, __base__=_Section, **{key: (Any, None) for key in keys.split()})


# image: the backbone and its projection (hidden: VSE's two-layer projection; model, model_cfg: open_clip)
ImageSection = _section("ImageSection", "backbone pretrained freeze dropout hidden train_last_blocks "
                                        "backbone_lr_scale model model_cfg")
# text: gru | lstm | sentence_transformer | textcnn (blocks, channels, position_shift, word_vectors)
TextSection = _section("TextSection", "kind word_dim hidden_dim max_length layers rnn path freeze dropout blocks "
                                      "channels position_shift word_vectors")
LossSection = _section("LossSection", "kind margin warmup_epochs anneal_epochs temperature weight")
InstanceLossSection = _section("InstanceLossSection", "weight dropout classes")          # Dual-Path
StagesSection = _section("StagesSection", "stage1_epochs stage1_backbone")               # Dual-Path
CaptionSection = _section("CaptionSection", "attention_dim beam_width hidden_dim max_length regions_from "
                                            "scst_from_epoch scst_weight weight word_dim")  # GXN
ImagineSection = _section("ImagineSection", "condition_dim discriminator_lr discriminator_width generator_width "
                                            "image_size kl_weight noise_dim weight")  # GXN
ScheduleSection = _section("ScheduleSection", "warmup_epochs")                           # GXN


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
    lambda_: Any = Field(None, alias="lambda")         # GXN's weight of the low level (a Python keyword)


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
