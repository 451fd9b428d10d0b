"""Alembic environment: the URL comes from the caller (indexer.db.upgrade_database) or from
DATABASE_URL; the table metadata from the catalogue."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import engine_from_config, pool

from indexer.catalogue import Base
from indexer.db import normalise_database_url

config = context.config
url = normalise_database_url(config.get_main_option("sqlalchemy.url")
                             or os.environ.get("DATABASE_URL", "sqlite:///data/imgsearch.db"))
config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
