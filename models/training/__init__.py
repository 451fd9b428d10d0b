"""Training: the config dataclass and the loop shared by every encoder family."""

from models.training.config import TrainConfig
from models.training.trainer import BEST_MODEL, LAST_CHECKPOINT, TrainResult, train

__all__ = ["BEST_MODEL", "LAST_CHECKPOINT", "TrainConfig", "TrainResult", "train"]
