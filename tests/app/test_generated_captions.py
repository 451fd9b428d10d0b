"""A gallery without captions, indexed by an encoder that describes images: image -> text answers
with the generated captions, and the API and the page say they are generated."""

from __future__ import annotations

import shutil

from fastapi.testclient import TestClient

from app.main import create_app
from indexer.build import BuildOptions, build_index
from indexer.db import session_factory
from models import create_encoder
from models.data import load_records
from models.vocab import Vocabulary
from tests.app.conftest import make_settings


def test_image_to_text_on_a_gallery_without_captions(app_dirs):
    folder = app_dirs["root"] / "photos"
    shutil.copytree(app_dirs["gallery"] / "images", folder)
    vocab = Vocabulary.build(c for r in load_records(app_dirs["gallery"]) for c in r.captions)
    checkpoint = create_encoder("gxn_tiny", vocab=vocab).save(app_dirs["root"] / "gxn.pt")
    report = build_index(gallery=str(folder), encoder_spec=str(checkpoint), name="photos",
                         index_dir=app_dirs["index_dir"], sessions=session_factory(app_dirs["url"]),
                         options=BuildOptions(progress=False, workers=0))
    assert report.described_images == report.caption_count >= 5
    with TestClient(create_app(make_settings(app_dirs, default_index="photos"))) as client:
        first = client.get("/api/search/text", params={"q": "a red circle", "k": 1}).json()["results"][0]
        answer = client.get("/api/search/image", params={"image_id": first["id"], "k": 5, "collapse": False}).json()
        assert len(answer["results"]) == 5 and {hit["source"] for hit in answer["results"]} == {"generated"}
        assert first["captions"] == []  # an image's own captions are the human ones: it has none
        page = client.get("/", params={"mode": "image", "id": first["id"]})
        badges = page.text.count('<span class="source" title="written by the model, not a person">generated</span>')
        assert page.status_code == 200 and badges >= 1 and badges == page.text.count('<span class="text">')
