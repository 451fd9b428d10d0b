"""What `imgsearch admin status` reports: per index, the current version and recent builds."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalogue import IndexVersion
from indexer.vector_store import VectorStore


@dataclass
class IndexStatus:
    name: str
    current_version: int | None
    manifest: dict = field(default_factory=dict)
    building: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def describe(self) -> str:
        if self.current_version is None:
            head = f"{self.name}: no current version"
        else:
            m = self.manifest
            head = (f"{self.name}: version {self.current_version}, {m['image_count']} images, "
                    f"{m['caption_count']} captions, encoder {m['encoder_name']} ({m['checkpoint_hash'][:12]}), "
                    f"{m['image_index']['factory']} / {m['caption_index']['factory']}, built {m['built_at']}")
        lines = [head]
        if self.building:
            lines.append(f"  building: version(s) {', '.join(map(str, self.building))}")
        for version, message in self.failed[-3:]:
            lines.append(f"  failed: version {version}: {message}")
        return "\n".join(lines)


def index_names(store: VectorStore, sessions: sessionmaker[Session]) -> list[str]:
    """Indexes the catalogue knows or the store serves."""
    with sessions() as session:
        names = set(session.scalars(select(IndexVersion.index_name).distinct()).all())
    return sorted(names | set(store.index_names()))


def index_status(store: VectorStore, sessions: sessionmaker[Session], name: str) -> IndexStatus:
    current = store.current(name)
    with sessions() as session:
        rows = session.scalars(select(IndexVersion).where(IndexVersion.index_name == name)
                               .order_by(IndexVersion.version)).all()
    return IndexStatus(name, current.number if current else None, current.manifest if current else {},
                       [r.version for r in rows if r.status == "building"],
                       [(r.version, r.message) for r in rows if r.status == "failed"])


def latest_build_source(sessions: sessionmaker[Session], name: str) -> tuple[str, str]:
    """(gallery, encoder) of the newest successful build of `name`, for `admin reindex`."""
    with sessions() as session:
        row = session.scalars(select(IndexVersion).where(IndexVersion.index_name == name,
                                                         IndexVersion.status.in_(("active", "superseded")))
                              .order_by(IndexVersion.version.desc())).first()
    if row is None:
        raise ValueError(f"index {name!r} has never been built: run `imgsearch index` first")
    return row.gallery, row.encoder_path
