"""Build or update one named index: scan the gallery, encode what changed, build the faiss
indexes into a new version directory, record it in the catalogue, then switch it in.

Nothing the serving app reads changes until the end: the catalogue rows are written in one
transaction committed just before CURRENT is replaced, so an interrupted build (crash, Ctrl-C)
leaves the previous version serving and its temporary directory is removed.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from indexer import assembly, catalogue_reads, catalogue_writes, store, version_files
from indexer.catalogue import IndexVersion
from indexer.gallery import GalleryChanges, KnownImage, ScannedFile, scan_changes
from indexer.pipeline import encode_image_files
from indexer.status import latest_build_source
from models.data import DatasetError, SkipReport, load_records
from models.encoders import Encoder, resolve_encoder


@dataclass
class BuildOptions:
    index_type: str = "auto"           # auto | flat | hnsw | ivfpq
    memory_budget: int | None = None   # bytes; None = no limit
    recall_target: float = 0.95
    batch_size: int = 64
    workers: int = 2
    device: str = "cpu"
    backbone_runtime: str = "openvino"  # how the image backbone runs on the CPU (backbone_runtime.RUNTIMES)
    progress: bool = True
    keep_versions: int = 2


@dataclass
class BuildReport:
    name: str
    status: str                        # built | up-to-date
    version: int | None
    image_count: int = 0
    caption_count: int = 0
    encoded_images: int = 0
    reused_images: int = 0
    removed_images: int = 0
    changes: str = ""
    image_index: dict = field(default_factory=dict)
    caption_index: dict = field(default_factory=dict)
    skipped: SkipReport = field(default_factory=SkipReport)
    seconds: float = 0.0
    images_per_second: float = 0.0

    def summary(self) -> str:
        if self.status == "up-to-date":
            return f"{self.name}: up to date at version {self.version} ({self.changes}); nothing encoded"
        lines = [f"{self.name}: version {self.version} is now current ({self.changes})",
                 f"  {self.image_count} images ({self.encoded_images} encoded at {self.images_per_second:.0f} img/s, "
                 f"{self.reused_images} reused, {self.removed_images} removed), {self.caption_count} captions",
                 f"  image index {self.image_index.get('factory')} (recall@10 {self.image_index.get('recall', 1):.3f}),"
                 f" caption index {self.caption_index.get('factory')}; {self.seconds:.1f} s"]
        if len(self.skipped):
            lines.append("  " + self.skipped.summary().replace("\n", "\n  "))
        return "\n".join(lines)


@contextmanager
def build_lock(index_dir: Path, name: str):
    """One build per index name at a time (a second one fails at once instead of corrupting)."""
    root = store.index_root(index_dir, name)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise RuntimeError(f"another build of index {name!r} is running") from error
        yield


def build_index(*, gallery: str, encoder_spec: str, name: str, index_dir: Path,
                sessions: sessionmaker[Session], full: bool = False,
                options: BuildOptions | None = None) -> BuildReport:
    """Build (or incrementally update) index `name` from `gallery` with `encoder_spec`."""
    options = options or BuildOptions()
    started = time.perf_counter()
    gallery_path = Path(gallery)
    if not gallery_path.exists():
        raise DatasetError(f"{gallery}: gallery path not found")
    records = load_records(gallery_path)
    gallery_key = str(gallery_path.resolve())
    encoder, encoder_path, checkpoint_hash = resolve_encoder(encoder_spec, options.device, options.backbone_runtime)
    with build_lock(index_dir, name):
        reconcile(index_dir, name, sessions)
        previous = store.current_version(index_dir, name)
        if previous is not None and previous.manifest["checkpoint_hash"] != checkpoint_hash and not full:
            print(f"{name}: the encoder differs from version {previous.number}'s: re-encoding everything")
            full = True
        known = catalogue_reads.known_images(sessions, previous)
        changes = scan_changes(records, known, full=full)
        if previous is not None and changes.nothing_to_do and not full:
            return BuildReport(name, "up-to-date", previous.number, changes=changes.summary(),
                               skipped=changes.missing, seconds=time.perf_counter() - started)
        with _new_version(sessions, index_dir, name, gallery_key, encoder, encoder_path,
                          checkpoint_hash) as (row, stage):
            report = _build_version(sessions, row, stage, changes, previous, encoder, gallery_key,
                                    index_dir, name, options)
        store.remove_old_versions(index_dir, name, keep=options.keep_versions)
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class _Stage:
    """How far a build got, so a failure undoes exactly what is not yet committed."""

    temporary: Path
    published: Path | None = None
    committed: bool = False


@contextmanager
def _new_version(sessions, index_dir: Path, name: str, gallery_key: str, encoder: Encoder, encoder_path: str,
                 checkpoint_hash: str) -> Iterator[tuple[IndexVersion, _Stage]]:
    """A registered 'building' version and its staging directory. On any failure (Ctrl-C
    included) what is not yet committed is undone and the version recorded as failed."""
    row = catalogue_writes.register_build(sessions, name, gallery_key, encoder, encoder_path, checkpoint_hash,
                                          store.versions_on_disk(index_dir, name))
    stage = _Stage(store.start_build(index_dir, name))
    try:
        yield row, stage
    except BaseException as error:
        if not stage.committed:
            store.abandon_build(stage.temporary)
            if stage.published is not None:
                store.abandon_build(stage.published)
            catalogue_writes.mark_failed(sessions, row, f"{type(error).__name__}: {error}")
        # Committed but not switched: the catalogue says the new version is active, and the
        # next build (reconcile) points CURRENT at it; until then the previous one serves.
        raise


def reindex(name: str, *, index_dir: Path, sessions: sessionmaker[Session], full: bool = False,
            encoder_spec: str | None = None, options: BuildOptions | None = None) -> BuildReport:
    """Update index `name` from the gallery (and, unless `encoder_spec` names another, the encoder)
    of its newest successful build."""
    gallery, previous_encoder = latest_build_source(sessions, name)
    return build_index(gallery=gallery, encoder_spec=encoder_spec or previous_encoder, name=name,
                       index_dir=index_dir, sessions=sessions, full=full, options=options)


def reconcile(index_dir: Path, name: str, sessions: sessionmaker[Session]) -> None:
    """Repair what a crash can leave: builds still marked 'building' failed, their temporary
    directories, and CURRENT behind the catalogue's active version (a crash between the commit and
    the switch). Called by every build, holding the build lock, before it decides anything."""
    store.remove_abandoned_builds(index_dir, name)
    active = catalogue_writes.fail_interrupted_builds(sessions, name)
    try:
        current = store.current_version(index_dir, name)
    except FileNotFoundError:  # CURRENT names a directory that is gone (e.g. lost in a power cut)
        current = None
    complete = store.versions_on_disk(index_dir, name)
    if active is not None and active in complete and (current is None or current.number != active):
        store.switch_current(index_dir, name, active)
    elif current is None and complete and store.pointer_stamp(index_dir, name) is not None:
        store.switch_current(index_dir, name, complete[-1])  # dangling CURRENT: the newest complete version


def _build_version(sessions, row: IndexVersion, stage: _Stage, changes: GalleryChanges,
                   previous: store.StoredVersion | None, encoder: Encoder, gallery_key: str, index_dir: Path,
                   name: str, options: BuildOptions) -> BuildReport:
    to_encode = changes.new + [scanned for scanned, _ in changes.changed]
    encoded = encode_image_files(encoder, [s.record.path for s in to_encode], options.batch_size, options.workers,
                                 options.progress)
    skipped = SkipReport(changes.missing.skipped + encoded.report.skipped)
    with sessions() as session, session.begin():
        image_rows = catalogue_writes.write_image_rows(session, gallery_key, to_encode, encoded, changes)
        kept = _reused(changes)
        captions, recaptioned = catalogue_writes.write_caption_rows(session, to_encode, image_rows, changes,
                                                                    previous)
        arrays = assembly.assemble(previous, encoder, image_rows, encoded, kept, captions, recaptioned,
                                   options.progress)
        removed_ids = [k.row_id for _, k in changes.removed]
        removed_ids += [k.row_id for s, k in changes.changed if s.record.image_id not in image_rows]
        catalogue_writes.delete_unshared_images(session, name, removed_ids)
        manifest = _write_and_activate(session, row, stage, arrays, encoder, index_dir, options,
                                       encoded_images=len(encoded.kept), skipped_files=len(skipped))
    stage.committed = True
    store.switch_current(index_dir, name, row.version)
    return BuildReport(name, "built", row.version, len(arrays["image_ids"]), len(arrays["caption_ids"]),
                       len(encoded.kept), len(kept), len(removed_ids), changes.summary(), manifest["image_index"],
                       manifest["caption_index"], skipped, 0.0, encoded.images_per_second)


def _write_and_activate(session: Session, row: IndexVersion, stage: _Stage, arrays: dict[str, np.ndarray],
                        encoder: Encoder, index_dir: Path, options: BuildOptions, **counts: int) -> dict:
    """Write the version's files, move them to their final place and mark the version active (the
    caller's transaction commits it; CURRENT is switched after the commit)."""
    manifest = version_files.write_version_files(stage.temporary, arrays, row, encoder, options)
    published = store.publish(index_dir, row.index_name, stage.temporary, row.version)
    stage.published = published.directory
    catalogue_writes.record_entries(session, row, arrays)
    catalogue_writes.activate(session, row, manifest, str(published.directory), len(arrays["image_ids"]),
                              len(arrays["caption_ids"]), **counts)
    return manifest


def publish_vectors(*, name: str, index_dir: Path, sessions: sessionmaker[Session], gallery: str,
                    encoder_spec: str, arrays: dict[str, np.ndarray], options: BuildOptions | None = None) -> int:
    """Publish a version of index `name` from vectors computed elsewhere (benchmarks, embeddings
    imported from another tool) and return its number. `arrays` holds image_ids/image_vectors and
    caption_ids/caption_image_ids/caption_vectors; the catalogue rows those ids name must exist."""
    options = options or BuildOptions()
    encoder, encoder_path, checkpoint_hash = resolve_encoder(encoder_spec, options.device, options.backbone_runtime)
    for modality in ("image", "caption"):
        vectors = arrays[f"{modality}_vectors"]
        if vectors.ndim != 2 or vectors.shape[1:] != (encoder.embed_dim,):
            raise ValueError(f"{modality} vectors are {vectors.shape[1:]}-d; "
                             f"{encoder.name} embeds in {encoder.embed_dim} dimensions")
        if len(arrays[f"{modality}_ids"]) != len(vectors):
            raise ValueError(f"{len(arrays[f'{modality}_ids'])} {modality} ids for {len(vectors)} vectors")
        norms = np.linalg.norm(vectors, axis=1)
        if len(norms) and not np.allclose(norms, 1.0, atol=1e-3):
            raise ValueError(f"{modality} vectors must be L2-normalised (norms from {norms.min():.3f} "
                             f"to {norms.max():.3f})")
    if len(arrays["caption_image_ids"]) != len(arrays["caption_ids"]):
        raise ValueError("caption_image_ids and caption_ids differ in length")
    with build_lock(index_dir, name):
        reconcile(index_dir, name, sessions)
        with _new_version(sessions, index_dir, name, gallery, encoder, encoder_path,
                          checkpoint_hash) as (row, stage):
            with sessions() as session, session.begin():
                _write_and_activate(session, row, stage, arrays, encoder, index_dir, options)
            stage.committed = True
            store.switch_current(index_dir, name, row.version)
        store.remove_old_versions(index_dir, name, keep=options.keep_versions)
    return row.version


def _reused(changes: GalleryChanges) -> list[tuple[ScannedFile, KnownImage]]:
    """Images whose vectors carry over from the previous version."""
    return changes.unchanged + changes.captions_changed


