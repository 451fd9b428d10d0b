"""Encoder families behind one interface (`Encoder`) and one registry."""

from models.encoders.base import CheckpointError, Encoder, PretrainedUnavailableError, l2_normalize
from models.encoders.registry import (
                                      create_encoder,
                                      get_encoder_config,
                                      list_encoders,
                                      load_encoder,
                                      needs_vocabulary,
                                      register_family,
                                      resolve_encoder,
)

__all__ = ["CheckpointError", "Encoder", "PretrainedUnavailableError", "create_encoder", "get_encoder_config",
           "l2_normalize", "list_encoders", "load_encoder", "needs_vocabulary", "register_family",
           "resolve_encoder"]
