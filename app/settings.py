"""All settings in one place, read from the environment (or a .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.db import normalise_database_url
from indexer.vector_store import VectorStore, open_vector_store


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = Field("sqlite:///data/imgsearch.db", description="SQLAlchemy URL of the catalogue")
    index_dir: Path = Field(Path("data/indexes"), description="where versioned index directories (and build "
                                                                "locks, and thumbnails) live")
    vector_store_url: str | None = Field(None, description="where vectors live: unset or 'faiss' for faiss files "
                                                           "under INDEX_DIR; 'milvus-lite:PATH.db' for an embedded "
                                                           "Milvus file; 'http://HOST:19530' for a Milvus server")
    default_index: str = Field("default", description="index (and so encoder) served when a query names none")
    device: str = Field("cpu", description="torch device for encoders: cpu, cuda, cuda:1 ...")
    backbone_runtime: str = Field("openvino", description="how image backbones run on the CPU: openvino (compiled, "
                                                          "equal to eager within 1e-4), openvino-bf16 or torch")
    admin_token: str | None = Field(None, description="bearer token for admin endpoints; unset disables them")
    max_upload_bytes: int = Field(10 * 2**20, description="largest accepted image upload")
    max_query_chars: int = Field(500, description="longest accepted text query")
    search_threads: int = Field(0, ge=0, description="0: queries run on each server process's event loop, one "
                                                      "at a time (fastest: run a process per core, serve "
                                                      "--workers); N: in a pool of N threads per process")

    def vector_store(self) -> VectorStore:
        return open_vector_store(self.vector_store_url, self.index_dir)

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        return normalise_database_url(value)


@lru_cache
def get_settings() -> Settings:
    return Settings()
