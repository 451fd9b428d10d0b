"""The indexes (and the encoder of each) this app serves, reloaded when an admin build switches
a new version in. Encoders are loaded once per checkpoint and kept across reloads."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from PIL import Image

from app.services.errors import NotFound, Unavailable
from indexer.serving import LiveIndex
from indexer.vector_store import SearchableVersion, VectorStore
from models.encoders import Encoder, resolve_encoder


@dataclass
class Served:
    name: str
    loaded: SearchableVersion
    encoder: Encoder


class ServedIndexes:
    def __init__(self, store: VectorStore, default: str, device: str = "cpu", backbone_runtime: str = "openvino"):
        self.store, self.default, self.device = store, default, device
        self.backbone_runtime = backbone_runtime
        self._live: dict[str, LiveIndex] = {}
        self._encoders: dict[str, Encoder] = {}  # by checkpoint hash
        self._lock = threading.RLock()
        self.gpu = device.startswith("cuda")  # the store uses the GPU when it has one
        self.discover()

    def discover(self) -> list[str]:
        """Serve every index that has a current version (new ones appear without a restart)."""
        found = self.store.index_names()
        with self._lock:
            for name in found:
                if name not in self._live:
                    live = LiveIndex(self.store, name, self.gpu, prepare=self._prepare)
                    self._live = {**self._live, name: live}
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
        """The loaded version of index `name` (the default when None); a newer one, if CURRENT
        changed, is loaded (with its encoder) in the background and serves once it is ready. An
        index name seen for the first time is loaded here, once."""
        if name is not None and name not in self._live:
            self.discover()
        chosen = name or self.default_name
        if chosen is None:
            raise Unavailable(f"no index is built yet in {self.store.location}: run `imgsearch index`")
        if chosen not in self._live:
            raise NotFound(f"unknown encoder/index {name!r}; served: {', '.join(self.names) or 'none'}")
        live = self._live[chosen]
        live.reload_in_background()  # a stat() per request (faiss): new versions serve without a restart
        loaded = live.current
        return Served(chosen, loaded, self._encoder_for(loaded))

    def reload_all(self) -> dict[str, int]:
        self.discover()
        live_indexes = dict(self._live)  # replaced, never mutated, so iterating a snapshot is safe
        for live in live_indexes.values():
            live.reload_if_changed(wait=True)
        return {name: live.current.number for name, live in live_indexes.items()}

    def _prepare(self, loaded: SearchableVersion) -> None:
        """Load the version's encoder and run one query of each kind through it and both indexes
        before it serves: the first real query otherwise pays for thread pools, compiled graphs and
        first-touch memory (about 200 ms instead of 10)."""
        encoder = self._encoder_for(loaded)
        text = encoder.encode_text(["a photo"]).cpu().numpy()
        image = encoder.encode_image([Image.new("RGB", (encoder.image_size,) * 2)]).cpu().numpy()
        for modality in ("image", "caption"):
            loaded.search(modality, text, 10, query_modality="caption")
            loaded.search(modality, image, 10, query_modality="image")

    def _encoder_for(self, loaded: SearchableVersion) -> Encoder:
        checkpoint_hash = loaded.manifest["checkpoint_hash"]
        encoder = self._encoders.get(checkpoint_hash)
        if encoder is None:
            with self._lock:
                encoder = self._encoders.get(checkpoint_hash)
                if encoder is None:
                    encoder, _, found_hash = resolve_encoder(loaded.manifest["encoder_path"], self.device,
                                                                    self.backbone_runtime)
                    if found_hash != checkpoint_hash:  # queries must be encoded by the model that built the index
                        raise Unavailable(f"the encoder checkpoint {loaded.manifest['encoder_path']} changed after "
                                          f"index {loaded.manifest['name']!r} was built: reindex it with --full")
                    self._encoders[checkpoint_hash] = encoder
        return encoder
