"""The app-side reload: a new version switches in without a failed search."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from indexer.build import BuildOptions, build_index
from indexer.faiss_store import FaissFileStore
from indexer.serving import LiveIndex
from models import load_encoder


def test_live_index_reloads_new_versions_without_failed_searches(gallery, encoder_checkpoint, tmp_path):
    from indexer.db import session_factory

    sessions = session_factory(f"sqlite:///{tmp_path / 'c.db'}")
    options = BuildOptions(progress=False, workers=0)

    def build():
        return build_index(gallery=str(gallery), encoder_spec=str(encoder_checkpoint), name="live",
                           index_dir=tmp_path / "idx", sessions=sessions, options=options)

    with pytest.raises(LookupError, match="has no version yet"):
        LiveIndex(FaissFileStore(tmp_path / "idx"), "live").current  # noqa: B018
    build()
    live = LiveIndex(FaissFileStore(tmp_path / "idx"), "live")
    assert live.current.number == 1 and not live.reload_if_changed()
    query = load_encoder(encoder_checkpoint).encode_text(["a red circle"]).numpy()
    scores, ids = live.current.search("image", query, 5)
    assert ids.shape == (1, 5) and (ids > 0).all() and np.all(np.diff(scores[0]) <= 1e-6)

    failures: list[Exception] = []
    stop = threading.Event()

    def keep_searching():
        while not stop.is_set():
            try:
                live.reload_if_changed()
                _, found = live.current.search("caption", query, 3)
                assert (found >= 0).all()
            except Exception as error:  # any failure is what this test is about
                failures.append(error)

    searcher = threading.Thread(target=keep_searching)
    searcher.start()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(sorted((gallery / "images").glob("*.png"))[0])
    build()
    stop.set()
    searcher.join()
    live.reload_if_changed()
    assert not failures and live.current.number == 2
    assert live.current.search("image", query, 100)[1].shape == (1, 30)  # k is capped at the index size
    # A version that cannot be loaded (here: its index file is corrupt) is skipped: v2 keeps serving.
    build()  # nothing changed: no new version; force one with a damaged file
    broken = tmp_path / "idx" / "live" / "versions" / "v000002"
    (broken.parent / "v000003").mkdir()
    for item in broken.iterdir():
        (broken.parent / "v000003" / item.name).write_bytes(item.read_bytes())
    (broken.parent / "v000003" / "images.faiss").write_bytes(b"garbage")
    FaissFileStore(tmp_path / "idx").switch("live", 3)
    assert live.reload_if_changed() is False and live.current.number == 2
    assert live.current.search("caption", query, 3)[1].shape == (1, 3)
    # Not retried on every request, but a repaired version is loaded on the next retry.
    (broken.parent / "v000003" / "images.faiss").write_bytes((broken / "images.faiss").read_bytes())
    assert live.reload_if_changed() is False and live.current.number == 2
    assert live.reload_if_changed(wait=True) is True and live.current.number == 3
