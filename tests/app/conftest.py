"""App fixtures: a tiny index over synthetic scenes, and a TestClient on an app configured for it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer.build import BuildOptions, build_index
from indexer.db import session_factory
from models import create_encoder
from models.data import generate_scenes, load_records
from models.vocab import Vocabulary

ADMIN_TOKEN = "s3cret-token"


@pytest.fixture(scope="session")
def served_gallery(tmp_path_factory) -> dict:
    """A 40-scene gallery, an encoder checkpoint and a built index, shared by the app tests."""
    root = tmp_path_factory.mktemp("served")
    dataset = generate_scenes(root / "gallery", 40, seed=21, image_size=32)
    vocab = Vocabulary.build(c for r in load_records(dataset) for c in r.captions)
    encoder = create_encoder("vse_tiny_gru", vocab=vocab, overrides={"embed_dim": 32, "text": {"word_dim": 16}})
    checkpoint = encoder.save(root / "tiny.pt")
    url = f"sqlite:///{root / 'catalogue.db'}"
    build_index(gallery=str(root / "gallery"), encoder_spec=str(checkpoint), name="tiny", index_dir=root / "idx",
                sessions=session_factory(url), options=BuildOptions(progress=False, workers=0))
    return {"root": root, "url": url, "checkpoint": checkpoint}


@pytest.fixture
def app_dirs(served_gallery, tmp_path) -> dict:
    """A private copy of the served state, so a test may rebuild or break it."""
    target = tmp_path / "state"
    shutil.copytree(served_gallery["root"], target)
    return {"root": target, "url": f"sqlite:///{target / 'catalogue.db'}", "index_dir": target / "idx",
            "gallery": target / "gallery", "checkpoint": served_gallery["checkpoint"]}


def make_settings(dirs: dict, **changes) -> Settings:
    values = {"database_url": dirs["url"], "index_dir": dirs["index_dir"], "default_index": "tiny",
              "admin_token": ADMIN_TOKEN, "max_upload_bytes": 200_000, "max_query_chars": 200}
    return Settings(**{**values, **changes})


@pytest.fixture
def client(app_dirs) -> TestClient:
    with TestClient(create_app(make_settings(app_dirs))) as test_client:
        yield test_client


@pytest.fixture
def gallery_ids(client) -> list[int]:
    return [hit["id"] for hit in client.get("/api/search/text", params={"q": "a shape", "k": 40}).json()["results"]]


def png_bytes(colour=(200, 30, 30), size=32) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def served_path(dirs: dict) -> Path:
    return dirs["index_dir"] / "tiny"


@pytest.fixture
def gxn_dirs(app_dirs) -> dict:
    """app_dirs plus an index "gxn" served by a tiny (untrained) GXN encoder, which has both a
    caption decoder and an image generator."""
    captions = [c for r in load_records(app_dirs["gallery"]) for c in r.captions]
    gxn = create_encoder("gxn_tiny", vocab=Vocabulary.build(captions))
    checkpoint = gxn.save(app_dirs["root"] / "gxn.pt")
    build_index(gallery=str(app_dirs["gallery"]), encoder_spec=str(checkpoint), name="gxn",
                index_dir=app_dirs["index_dir"], sessions=session_factory(app_dirs["url"]),
                options=BuildOptions(progress=False, workers=0))
    return app_dirs


DAN_TINY = {"image": {"pretrained": None}, "text": {"word_dim": 16},
            "attention": {"steps": 2, "step_dim": 8, "hidden_dim": 8}}


@pytest.fixture(scope="session")
def dan_dirs(served_gallery, tmp_path_factory) -> dict:
    """The served state plus an index "dan" served by a tiny (untrained) m-DAN encoder: two
    attention steps over the 7 x 7 map of a random-weight EfficientNet-Lite0 at 224 px. Built once;
    tests only read it."""
    target = tmp_path_factory.mktemp("dan") / "state"
    shutil.copytree(served_gallery["root"], target)
    dirs = {"root": target, "url": f"sqlite:///{target / 'catalogue.db'}", "index_dir": target / "idx",
            "gallery": target / "gallery", "checkpoint": served_gallery["checkpoint"]}
    captions = [c for r in load_records(dirs["gallery"]) for c in r.captions]
    dan = create_encoder("dan_lite0_gru", vocab=Vocabulary.build(captions), overrides=DAN_TINY)
    build_index(gallery=str(dirs["gallery"]), encoder_spec=str(dan.save(target / "dan.pt")), name="dan",
                index_dir=dirs["index_dir"], sessions=session_factory(dirs["url"]),
                options=BuildOptions(progress=False, workers=0))
    return dirs
