"""Indexer fixtures: a tiny encoder checkpoint, a mutable gallery, and catalogues on SQLite and
(where installed) a real PostgreSQL."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from indexer.db import session_factory
from models import create_encoder
from models.data import generate_scenes, load_records
from models.vocab import Vocabulary
from tests.postgres import temporary_postgres

_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def encoder_checkpoint(tmp_path_factory, scenes) -> Path:
    """An (untrained) tiny VSE encoder saved as a checkpoint: indexing needs no trained weights."""
    vocab = Vocabulary.build(c for r in load_records(scenes) for c in r.captions)
    encoder = create_encoder("vse_tiny_gru", vocab=vocab, overrides={"embed_dim": 32, "text": {"word_dim": 16}})
    return encoder.save(tmp_path_factory.mktemp("encoder") / "tiny.pt")


@pytest.fixture(scope="session")
def _scene_source(tmp_path_factory) -> Path:
    return generate_scenes(tmp_path_factory.mktemp("source"), 30, seed=11, image_size=32).parent


@pytest.fixture
def gallery(tmp_path, _scene_source) -> Path:
    """A private copy of a 30-scene gallery that a test may change."""
    target = tmp_path / "gallery"
    shutil.copytree(_scene_source, target)
    return target


@pytest.fixture(scope="session")
def _postgres_server():
    try:
        with temporary_postgres() as url:
            yield url
    except FileNotFoundError as error:
        yield error


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    server = request.getfixturevalue("_postgres_server")
    if isinstance(server, Exception):
        pytest.skip(f"no PostgreSQL here: {server}")
    name = f"imgsearch_t{next(_database_numbers)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def sessions(database_url):
    return session_factory(database_url)
