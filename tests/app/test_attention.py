"""Attention maps through the API and the server-rendered page: a DAN index answers
`attention=true` with the query's word weights or region grid; other encoders say they have none."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from models.vocab import tokenize
from tests.app.conftest import make_settings, png_bytes


@pytest.fixture(scope="module")
def dan_client(dan_dirs):
    with TestClient(create_app(make_settings(dan_dirs, default_index="dan"))) as client:
        yield client


def _distributions(steps) -> bool:
    return all(abs(sum(_flat(step)) - 1) < 1e-3 for step in steps)


def _flat(values) -> list[float]:
    return [v for row in values for v in (_flat(row) if isinstance(row, list) else [row])] \
        if isinstance(values, list) else [values]


def test_text_query_attention_names_each_word_with_its_weight(dan_client):
    query = "a small red circle to the left"
    body = dan_client.get("/api/search/text", params={"q": query, "k": 3, "attention": True}).json()
    attention = body["query_attention"]
    assert attention["words"] == tokenize(query) and "region_weights" not in attention
    assert len(attention["word_weights"]) == 2 and _distributions(attention["word_weights"])
    assert all(len(step) == len(attention["words"]) for step in attention["word_weights"])
    assert "attention" in body["timings_ms"] and len(body["results"]) == 3
    plain = dan_client.get("/api/search/text", params={"q": query, "k": 3}).json()
    assert "query_attention" not in plain and [h["id"] for h in plain["results"]] == [h["id"] for h in body["results"]]


def test_image_query_attention_is_a_grid_per_step(dan_client):
    first = dan_client.get("/api/search/text", params={"q": "a shape", "k": 1}).json()["results"][0]["id"]
    by_id = dan_client.get("/api/search/image", params={"image_id": first, "attention": True}).json()
    grid = by_id["query_attention"]["region_weights"]
    assert len(grid) == 2 and all(len(step) == 7 and all(len(row) == 7 for row in step) for step in grid)
    assert _distributions(grid) and "words" not in by_id["query_attention"]
    upload = dan_client.post("/api/search/image", files={"file": ("q.png", png_bytes(), "image/png")},
                             data={"attention": "true"}).json()
    assert len(upload["query_attention"]["region_weights"]) == 2


def test_an_encoder_without_attention_says_so_and_still_answers(client):
    body = client.get("/api/search/text", params={"q": "a red circle", "attention": True}).json()
    assert "query_attention" not in body and body["results"]
    assert any("no attention to show" in note for note in body["notes"])


def test_the_page_shows_bold_words_and_a_heat_grid(dan_client):
    page = dan_client.get("/", params={"q": "a small red circle"}).text
    assert "The model attended to:" in page
    words = re.findall(r'<span class="attended( strong)?" style="--share:([\d.]+)"', page)
    assert len(words) == 4 and any(strong for strong, _ in words) and max(float(s) for _, s in words) == 1.0
    first = dan_client.get("/api/search/text", params={"q": "a shape", "k": 1}).json()["results"][0]["id"]
    page = dan_client.get("/", params={"mode": "image", "id": first}).text
    assert '<figure class="looked">' in page and f'<img src="/images/{first}/thumb"' in page
    assert page.count('<span style="--share:') == 49


def test_an_image_whose_file_is_gone_still_answers_with_a_warning(dan_dirs, tmp_path):
    import shutil

    from sqlalchemy import update

    from indexer.catalogue import ImageRow
    from indexer.db import session_factory

    state = tmp_path / "state"  # a private copy: this test changes the catalogue
    shutil.copytree(dan_dirs["root"], state)
    dirs = {**dan_dirs, "url": f"sqlite:///{state / 'catalogue.db'}", "index_dir": state / "idx"}
    with TestClient(create_app(make_settings(dirs, default_index="dan"))) as client:
        image_id = client.get("/api/search/text", params={"q": "a shape", "k": 1}).json()["results"][0]["id"]
        with session_factory(dirs["url"])() as session:  # the file moved away after indexing
            session.execute(update(ImageRow).where(ImageRow.id == image_id).values(
                file_path=str(tmp_path / "moved-away.png")))
            session.commit()
        body = client.get("/api/search/image", params={"image_id": image_id, "attention": True})
    assert body.status_code == 200 and body.json()["results"]
    assert "query_attention" not in body.json()
    assert any(w.startswith("no attention map:") and "can no longer be read" in w for w in body.json()["warnings"])
