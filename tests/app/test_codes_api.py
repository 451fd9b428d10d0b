"""The app serving indexes built with compact codes (`--codes`): the same API, answered from the
codes; with every candidate re-ranked, exactly the float index's answers."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from indexer.build import BuildOptions, build_index
from indexer.codes import load_code_model
from indexer.db import session_factory
from indexer.faiss_store import CODES_FILE, FaissFileStore
from models.hashing import hamming_distances
from tests.app.conftest import make_settings


@pytest.fixture(scope="module")
def coded_client(served_gallery, tmp_path_factory):
    """The served state plus indexes "binary" (16-bit codes, no re-ranking), "reranked" (binary,
    every candidate re-ranked) and "catalysed" (4 bytes a vector) over the same gallery."""
    import shutil

    target = tmp_path_factory.mktemp("coded") / "state"
    shutil.copytree(served_gallery["root"], target)
    dirs = {"root": target, "url": f"sqlite:///{target / 'catalogue.db'}", "index_dir": target / "idx"}
    for name, codes, rerank in (("binary", "binary:16", 0), ("reranked", "binary:16", 1000),
                                ("catalysed", "catalysed:4", 0)):
        build_index(gallery=str(target / "gallery"), encoder_spec=str(served_gallery["checkpoint"]), name=name,
                    index_dir=dirs["index_dir"], sessions=session_factory(dirs["url"]),
                    options=BuildOptions(progress=False, workers=0, codes=codes, rerank=rerank))
    with TestClient(create_app(make_settings(dirs))) as client:
        yield client, dirs


def _hits(client, path: str, **params) -> list[dict]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()["results"]


QUERIES = ("a red circle", "a blue square on the left", "two shapes")


@pytest.mark.parametrize("query", QUERIES)
def test_fully_reranked_codes_answer_exactly_as_the_float_index(coded_client, query):
    client, _ = coded_client
    for target in ("image", "caption"):
        float_hits = _hits(client, "/api/search/text", q=query, k=8, index="tiny", target=target)
        coded_hits = _hits(client, "/api/search/text", q=query, k=8, index="reranked", target=target)
        key = "path" if target == "image" else "text"  # each index has its own catalogue rows
        assert [h[key] for h in coded_hits] == [h[key] for h in float_hits]
        np.testing.assert_allclose([h["score"] for h in coded_hits], [h["score"] for h in float_hits], rtol=1e-5,
                                   atol=1e-6)  # float32 inner products summed in another order


def test_binary_codes_answer_by_hamming_distance_from_the_query_code(coded_client):
    client, dirs = coded_client
    store = FaissFileStore(dirs["index_dir"])
    version = store.current("binary")
    directory = store.open(version).directory
    model = load_code_model(directory / CODES_FILE)
    image_ids = np.load(directory / "image_ids.npy")
    image_codes = model.item_codes("image", np.load(directory / "image_vectors.npy"))
    for query in QUERIES:
        vector = np.asarray(client.post("/api/embed", data={"text": query, "index": "binary"}).json()["embedding"],
                            np.float32)
        distances = hamming_distances(model.query_codes("caption", vector[None, :]), image_codes)[0]
        hits = _hits(client, "/api/search/text", q=query, k=6, index="binary")
        found = [int(np.flatnonzero(image_ids == h["id"])[0]) for h in hits]
        # the k smallest Hamming distances, and scores that are the cosine of the +-1 codes
        assert sorted(distances[found].tolist()) == np.sort(distances)[:6].tolist()
        np.testing.assert_allclose([h["score"] for h in hits], 1 - 2 * distances[found] / 16)


def test_every_query_kind_is_served_from_codes_hashed_by_its_own_modality(coded_client, monkeypatch):
    import json

    from indexer.codes import CatalysedCodes, HashCodes

    client, _ = coded_client
    asked = []
    for kind in (HashCodes, CatalysedCodes):
        original = kind.query_codes
        monkeypatch.setattr(kind, "query_codes", lambda self, modality, vectors, original=original:
                            asked.append(modality) or original(self, modality, vectors))
    for name in ("binary", "catalysed"):
        some_id = _hits(client, "/api/search/text", q="a shape", k=1, index=name)[0]["id"]
        asked.clear()
        assert _hits(client, "/api/search/text", q="a green triangle", k=5, index=name)
        assert _hits(client, "/api/search/image", image_id=some_id, k=5, index=name)
        image_hits = _hits(client, "/api/search/image", image_id=some_id, k=5, index=name, target="image")
        assert some_id not in [h["id"] for h in image_hits]
        assert _hits(client, "/api/search/arithmetic", image_id=some_id, minus="red", plus="blue", k=5, index=name)
        texts_heavy = {"terms": [{"image_id": some_id, "weight": 0.2}, {"text": "a blue square"}], "k": 3,
                       "index": name}
        response = client.post("/api/search/compose", data={"query": json.dumps(texts_heavy)})
        assert response.status_code == 200, response.text
        # text, image -> captions, image -> images, image - word + word, mostly text
        assert asked == ["caption", "image", "image", "image", "caption"]
    described = {entry["name"]: entry for entry in client.get("/api/stats").json()["indexes"]}
    assert described["binary"]["image_index"] == "BFlat16"
    assert described["reranked"]["image_index"] == "BFlat16,rerank1000"
    assert described["catalysed"]["image_index"].startswith("PQ4x8") or \
        described["catalysed"]["image_index"].startswith("Flat8")


def test_min_relevance_is_refused_on_codes_without_re_ranking(coded_client):
    client, _ = coded_client
    response = client.get("/api/search/text", params={"q": "a circle", "index": "binary", "min_relevance": 0.5})
    assert response.status_code == 400 and "no relevance calibration" in response.json()["detail"]
    reranked = client.get("/api/search/text", params={"q": "a circle", "index": "reranked", "min_relevance": 0.01})
    assert reranked.status_code == 200
