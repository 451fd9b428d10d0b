"""Alembic migrations build exactly the schema the ORM models declare, and step down and up again."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from indexer.catalogue import Base
from indexer.db import MIGRATIONS_DIR, upgrade_database


def _caption_columns(url: str) -> set[str]:
    return {column["name"] for column in inspect(create_engine(url)).get_columns("captions")}


def test_migrations_build_the_schema_the_models_declare(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade_database(url)
    with create_engine(url).connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    command.downgrade(config, "0001")  # generated captions lose the column naming their encoder
    assert "generated_by" not in _caption_columns(url) and "source" in _caption_columns(url)
    upgrade_database(url)
    assert "generated_by" in _caption_columns(url)
