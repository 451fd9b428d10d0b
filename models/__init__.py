"""Neural network models: datasets, vocabulary, encoder families and registry, losses, training, evaluation.

Where data enters: `models.data`. Where it is encoded: `models.encoders` (`create_encoder`,
`load_encoder`, and every encoder's `encode_image` / `encode_text`).
"""

from models.encoders import (
                             CheckpointError,
                             Encoder,
                             PretrainedUnavailableError,
                             create_encoder,
                             l2_normalize,
                             list_encoders,
                             load_encoder,
)
from models.evaluation import RetrievalMetrics, evaluate_encoder, recall_metrics
from models.vocab import Vocabulary, tokenize

__all__ = ["CheckpointError", "Encoder", "PretrainedUnavailableError", "RetrievalMetrics", "Vocabulary",
           "create_encoder", "evaluate_encoder", "l2_normalize", "list_encoders", "load_encoder",
           "recall_metrics", "tokenize"]
