"""The app and `admin reindex` unchanged on the Milvus store (milvus-lite, a local file):
searches of every kind, and a reindex through the admin API with searches running throughout,
none of them failing."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from indexer.build import BuildOptions, build_index
from indexer.db import session_factory
from tests.app.conftest import ADMIN_TOKEN, make_settings

pytest.importorskip("pymilvus", reason="the Milvus store needs pymilvus and milvus-lite (imgsearch[milvus])")


@pytest.fixture
def milvus_settings(app_dirs):
    """The served gallery indexed afresh into milvus-lite, with a catalogue of its own."""
    url = f"sqlite:///{app_dirs['root'] / 'milvus_catalogue.db'}"
    settings = make_settings(app_dirs, database_url=url,
                             vector_store_url=f"milvus-lite:{app_dirs['root'] / 'vectors.db'}")
    build_index(gallery=str(app_dirs["gallery"]), encoder_spec=str(app_dirs["checkpoint"]), name="tiny",
                index_dir=app_dirs["index_dir"], sessions=session_factory(url),
                options=BuildOptions(progress=False, workers=0), vector_store=settings.vector_store())
    return settings


def _answers(client: TestClient, first: int) -> list:
    """Every kind of search, as (image id or caption text, rounded score) per hit. Identical
    captions have identical vectors, so which of their ids comes first is a tie either store may
    break its own way."""
    requests = [("/api/search/text", {"q": "a red circle", "k": 5}),
                ("/api/search/text", {"q": "a blue square", "k": 5, "target": "caption"}),
                ("/api/search/image", {"image_id": first, "k": 5}),
                ("/api/search/image", {"image_id": first, "k": 5, "target": "image"}),
                ("/api/search/arithmetic", {"image_id": first, "minus": "red", "plus": "blue", "k": 5})]
    answers = []
    for path, params in requests:
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        answers.append([(hit.get("text", hit["id"]), round(hit["score"], 4)) for hit in response.json()["results"]])
    return answers


def test_every_kind_of_search_answers_as_on_faiss(milvus_settings, app_dirs):
    """Both stores hold the same vectors in exact indexes, so every answer must be the same."""
    with TestClient(create_app(make_settings(app_dirs))) as client:
        first = client.get("/api/search/text", params={"q": "a red circle", "k": 1}).json()["results"][0]["id"]
        on_faiss = _answers(client, first)
    with TestClient(create_app(milvus_settings)) as client:
        assert client.get("/api/stats").json()["indexes"][0]["version"] == 1
        on_milvus = _answers(client, first)
        assert client.get("/api/search/image", params={"image_id": 99_999}).status_code == 404
    assert on_milvus == on_faiss and all(len(answer) == 5 for answer in on_milvus)


def test_admin_reindex_on_milvus_with_no_failed_search(milvus_settings, app_dirs):
    Image.new("RGB", (32, 32), (9, 200, 9)).save(sorted((app_dirs["gallery"] / "images").glob("*.png"))[0])
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(create_app(milvus_settings)) as client:
        failures: list[str] = []
        versions: list[int] = []
        stop = threading.Event()

        def keep_searching() -> None:
            while not stop.is_set():
                response = client.get("/api/search/text", params={"q": "a green square", "k": 5})
                if response.status_code != 200 or len(response.json()["results"]) != 5:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    versions.append(response.json()["version"])

        searcher = threading.Thread(target=keep_searching)
        searcher.start()
        assert client.post("/api/admin/reindex", headers=headers).json() == {"started": ["tiny"]}
        for _ in range(300):
            job = client.get("/api/admin/status", headers=headers).json()["jobs"]["tiny"]
            if job != "running":
                break
            time.sleep(0.1)
        time.sleep(1.5)  # the Milvus store is polled once a second
        stop.set()
        searcher.join()
        assert "version 2 is now current" in job and "1 encoded" in job
        assert not failures and versions and versions[-1] == 2 and set(versions) <= {1, 2}
