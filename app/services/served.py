"""The indexes (and the encoder of each) this app serves, reloaded when an admin build switches
a new version in. Encoders are loaded once per checkpoint and kept across reloads."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from app.services.errors import NotFound, Unavailable
from indexer import store
from indexer.build import resolve_encoder
from indexer.serving import LiveIndex, LoadedVersion
from models.encoders import Encoder


@dataclass
class Served:
    name: str
    version: LoadedVersion
    encoder: Encoder


class ServedIndexes:
    def __init__(self, index_dir: Path, default: str, device: str = "cpu"):
        self.index_dir, self.default, self.device = Path(index_dir), default, device
        self._live: dict[str, LiveIndex] = {}
        self._encoders: dict[str, Encoder] = {}  # by checkpoint hash
        self._lock = threading.Lock()
        self.discover()

    def discover(self) -> list[str]:
        """Serve every index that has a CURRENT version (new ones appear without a restart)."""
        if self.index_dir.is_dir():
            for folder in sorted(self.index_dir.iterdir()):
                if (folder / store.POINTER).is_file() and folder.name not in self._live:
                    self._live[folder.name] = LiveIndex(self.index_dir, folder.name)
        return self.names

    @property
    def names(self) -> list[str]:
        return sorted(self._live)

    @property
    def default_name(self) -> str | None:
        if self.default in self._live:
            return self.default
        return self.names[0] if self.names else None

    def get(self, name: str | None = None) -> Served:
        """The current version of index `name` (the default when None), reloaded if it changed."""
        if name is not None and name not in self._live:
            self.discover()
        chosen = name or self.default_name
        if chosen is None:
            raise Unavailable(f"no index is built yet in {self.index_dir}: run `imgsearch index`")
        if chosen not in self._live:
            raise NotFound(f"unknown encoder/index {name!r}; served: {', '.join(self.names) or 'none'}")
        live = self._live[chosen]
        live.reload_if_changed()  # one stat() per request: picks up admin reindexes without a restart
        version = live.current
        return Served(chosen, version, self._encoder_for(version))

    def reload_all(self) -> dict[str, int]:
        self.discover()
        for live in self._live.values():
            live.reload_if_changed()
        return {name: live.current.version.version for name, live in self._live.items()}

    def _encoder_for(self, version: LoadedVersion) -> Encoder:
        checkpoint_hash = version.manifest["checkpoint_hash"]
        encoder = self._encoders.get(checkpoint_hash)
        if encoder is None:
            with self._lock:
                encoder = self._encoders.get(checkpoint_hash)
                if encoder is None:
                    encoder, _, _ = resolve_encoder(version.manifest["encoder_path"], self.device)
                    self._encoders[checkpoint_hash] = encoder
        return encoder
