"""Build or update one named index: scan the gallery, encode what changed, build the faiss
indexes into a new version directory, record it in the catalogue, then switch it in.

Nothing the serving app reads changes until the end: the catalogue rows are written in one
transaction committed just before CURRENT is replaced, so an interrupted build (crash, Ctrl-C)
leaves the previous version serving and its temporary directory is removed.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from indexer import faiss_index, store
from indexer.calibration import fit_calibration
from indexer.catalogue import CaptionRow, ImageRow, IndexEntry, IndexVersion, utc_now
from indexer.gallery import GalleryChanges, KnownImage, ScannedFile, scan_changes
from indexer.pipeline import encode_image_files, encode_texts
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
        known = _known_images(sessions, previous)
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
    row = _register_build(sessions, name, gallery_key, encoder, encoder_path, checkpoint_hash,
                              store.versions_on_disk(index_dir, name))
    stage = _Stage(store.start_build(index_dir, name))
    try:
        yield row, stage
    except BaseException as error:
        if not stage.committed:
            store.abandon_build(stage.temporary)
            if stage.published is not None:
                store.abandon_build(stage.published)
            _mark_failed(sessions, row, f"{type(error).__name__}: {error}")
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


def _known_images(sessions: sessionmaker[Session], previous: store.StoredVersion | None) -> dict[str, KnownImage]:
    """The images the current version holds, as the catalogue remembers them (keyed by gallery path)."""
    if previous is None:
        return {}
    ids = [int(i) for i in previous.ids("image")]
    known: dict[str, KnownImage] = {}
    with sessions() as session:
        for start in range(0, len(ids), 5000):
            rows = session.scalars(select(ImageRow).where(ImageRow.id.in_(ids[start:start + 5000]))
                                   .options(selectinload(ImageRow.captions))).all()
            for row in rows:
                captions = tuple(c.text for c in row.captions if c.source == "human")
                known[row.path] = KnownImage(row.id, row.file_size, row.file_mtime_ns, row.content_hash, captions)
    return known


def _register_build(sessions, name, gallery_key, encoder, encoder_path, checkpoint_hash,
                    on_disk: list[int]) -> IndexVersion:
    """A 'building' row with the next version number: past both the catalogue's and the disk's, so a
    fresh catalogue over an old INDEX_DIR never reuses (and overwrites) a version directory."""
    with sessions() as session, session.begin():
        latest = session.scalar(select(func.max(IndexVersion.version)).where(IndexVersion.index_name == name))
        number = max(latest or 0, max(on_disk, default=0)) + 1
        row = IndexVersion(index_name=name, version=number, status="building", gallery=gallery_key,
                           encoder_name=encoder.name, encoder_path=encoder_path, checkpoint_hash=checkpoint_hash,
                           embed_dim=encoder.embed_dim)
        session.add(row)
    return row


def _mark_failed(sessions, row: IndexVersion, message: str) -> None:
    with sessions() as session, session.begin():
        session.execute(update(IndexVersion).where(IndexVersion.id == row.id,
                                                   IndexVersion.status == "building").values(
            status="failed", message=message[:2000], finished_at=utc_now()))


def reconcile(index_dir: Path, name: str, sessions: sessionmaker[Session]) -> None:
    """Repair what a crash can leave: builds still marked 'building' failed, their temporary
    directories, and CURRENT behind the catalogue's active version (a crash between the commit and
    the switch). Called by every build, holding the build lock, before it decides anything."""
    store.remove_abandoned_builds(index_dir, name)
    with sessions() as session, session.begin():
        session.execute(update(IndexVersion).where(IndexVersion.index_name == name,
                                                   IndexVersion.status == "building")
                        .values(status="failed", message="interrupted", finished_at=utc_now()))
        active = session.scalar(select(IndexVersion.version).where(IndexVersion.index_name == name,
                                                                   IndexVersion.status == "active"))
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
        image_rows = _write_image_rows(session, gallery_key, to_encode, encoded, changes)
        kept = _reused(changes)
        captions, recaptioned = _write_caption_rows(session, to_encode, image_rows, changes, previous)
        arrays = _assemble(previous, encoder, image_rows, encoded, kept, captions, recaptioned, options.progress)
        removed_ids = [k.row_id for _, k in changes.removed]
        removed_ids += [k.row_id for s, k in changes.changed if s.record.image_id not in image_rows]
        _delete_unshared_images(session, name, removed_ids)
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
    manifest = _write_version_files(stage.temporary, arrays, row, encoder, options)
    published = store.publish(index_dir, row.index_name, stage.temporary, row.version)
    stage.published = published.directory
    _record_entries(session, row, arrays)
    session.execute(update(IndexVersion).where(IndexVersion.index_name == row.index_name,
                                               IndexVersion.status == "active").values(status="superseded"))
    session.execute(update(IndexVersion).where(IndexVersion.id == row.id).values(
        status="active", image_count=len(arrays["image_ids"]), caption_count=len(arrays["caption_ids"]),
        directory=str(published.directory), image_index_type=manifest["image_index"]["factory"],
        caption_index_type=manifest["caption_index"]["factory"], finished_at=utc_now(),
        build_seconds=manifest["build_seconds"], **counts))
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


def _delete_unshared_images(session: Session, name: str, image_ids: list[int]) -> None:
    """Delete the rows of images that left this index, unless another index's active version still
    serves them (several encoders may index one gallery)."""
    for start in range(0, len(image_ids), 5000):
        chunk = image_ids[start:start + 5000]
        shared = set(session.scalars(
            select(IndexEntry.image_id).join(IndexVersion, IndexEntry.version_id == IndexVersion.id)
            .where(IndexVersion.status == "active", IndexVersion.index_name != name, IndexEntry.image_id.in_(chunk))
            .distinct()).all())
        doomed = [i for i in chunk if i not in shared]
        if doomed:
            session.execute(delete(ImageRow).where(ImageRow.id.in_(doomed)))


def _reused(changes: GalleryChanges) -> list[tuple[ScannedFile, KnownImage]]:
    """Images whose vectors carry over from the previous version."""
    return changes.unchanged + changes.captions_changed


def _write_image_rows(session: Session, gallery_key: str, to_encode: list[ScannedFile], encoded,
                      changes: GalleryChanges) -> dict[str, int]:
    """Insert or update the rows of encoded images; returns gallery path -> row id for them."""
    known_rows = {s.record.image_id: k.row_id for s, k in changes.changed}
    known_rows.update(_existing_rows(session, gallery_key, [s.record.image_id for s in changes.new]))
    row_ids: dict[str, int] = {}
    for position, (width, height) in zip(encoded.kept, encoded.sizes, strict=True):
        scanned = to_encode[position]
        values = dict(file_path=str(scanned.record.path), content_hash=scanned.content_hash,
                      file_size=scanned.size, file_mtime_ns=scanned.mtime_ns, width=width, height=height,
                      split=scanned.record.split, updated_at=utc_now())
        row_id = known_rows.get(scanned.record.image_id)
        if row_id is None:
            row = ImageRow(gallery=gallery_key, path=scanned.record.image_id, **values)
            session.add(row)
            session.flush()
            row_id = row.id
        else:
            session.execute(update(ImageRow).where(ImageRow.id == row_id).values(**values))
        row_ids[scanned.record.image_id] = row_id
    for scanned, known in changes.unchanged + changes.captions_changed:  # a touched file: new stat, same bytes
        if (scanned.size, scanned.mtime_ns) != (known.size, known.mtime_ns):
            session.execute(update(ImageRow).where(ImageRow.id == known.row_id).values(
                file_size=scanned.size, file_mtime_ns=scanned.mtime_ns))
    return row_ids


def _existing_rows(session: Session, gallery_key: str, paths: list[str]) -> dict[str, int]:
    """Rows another index (same gallery, another encoder) already made for these paths."""
    found: dict[str, int] = {}
    for start in range(0, len(paths), 5000):
        found.update(session.execute(select(ImageRow.path, ImageRow.id).where(
            ImageRow.gallery == gallery_key, ImageRow.path.in_(paths[start:start + 5000]))).all())
    return found


def _write_caption_rows(session: Session, to_encode: list[ScannedFile], image_rows: dict[str, int],
                        changes: GalleryChanges, previous) -> tuple[list[tuple[int, int, str]], set[int]]:
    """Write the captions of encoded, re-captioned, or (by another index) re-written images; returns
    (caption id, image id, text) of the captions to encode, and the ids of those images."""
    targets = [(image_rows[s.record.image_id], tuple(s.record.captions)) for s in to_encode
               if s.record.image_id in image_rows]
    targets += [(known.row_id, tuple(scanned.record.captions)) for scanned, known in changes.captions_changed]
    targets += _captions_rewritten_elsewhere(session, previous, changes)
    written: list[tuple[int, int, str]] = []
    for image_id, texts in targets:
        current = session.execute(select(CaptionRow.id, CaptionRow.text).where(
            CaptionRow.image_id == image_id, CaptionRow.source == "human").order_by(CaptionRow.position)).all()
        if tuple(text for _, text in current) == texts:  # identical rows (e.g. made by another index): keep them
            written += [(caption_id, image_id, text) for caption_id, text in current]
            continue
        session.execute(delete(CaptionRow).where(CaptionRow.image_id == image_id, CaptionRow.source == "human"))
        for position, text in enumerate(texts):
            row = CaptionRow(image_id=image_id, position=position, text=text, source="human")
            session.add(row)
            session.flush()
            written.append((row.id, image_id, text))
    return written, {image_id for image_id, _ in targets}


def _captions_rewritten_elsewhere(session: Session, previous, changes: GalleryChanges) -> list[tuple[int, tuple]]:
    """Reused images whose previous caption rows are gone: another index over the same gallery
    replaced them. Their captions are taken (and encoded) afresh."""
    if previous is None:
        return []
    caption_ids = [int(c) for c in previous.ids("caption")]
    alive: set[int] = set()
    for start in range(0, len(caption_ids), 5000):
        alive.update(session.scalars(select(CaptionRow.id).where(
            CaptionRow.id.in_(caption_ids[start:start + 5000]))).all())
    stale_images = {int(i) for c, i in zip(caption_ids, previous.ids("caption_image"), strict=True) if c not in alive}
    return [(known.row_id, tuple(scanned.record.captions)) for scanned, known in changes.unchanged
            if known.row_id in stale_images]


def _assemble(previous, encoder: Encoder, image_rows: dict[str, int], encoded, kept, captions,
              recaptioned: set[int], progress: bool) -> dict[str, np.ndarray]:
    """The new version's vectors and id arrays: reused rows from the previous version plus new ones."""
    dim = encoder.embed_dim
    image_ids = [k.row_id for _, k in kept]
    image_vectors = [_rows_of(previous, "image", image_ids, dim)]
    new_image_ids = [image_rows[path] for path in image_rows]
    image_vectors.append(encoded.vectors)
    reused_captions = _previous_captions(previous, [i for i in image_ids if i not in recaptioned])
    caption_ids = [c for c, _ in reused_captions] + [c for c, _, _ in captions]
    caption_owner = [i for _, i in reused_captions] + [i for _, i, _ in captions]
    caption_vectors = [_rows_of(previous, "caption", [c for c, _ in reused_captions], dim),
                       encode_texts(encoder, [t for _, _, t in captions], progress=progress)]
    return {"image_ids": np.asarray(image_ids + new_image_ids, dtype=np.int64),
            "image_vectors": np.concatenate(image_vectors).astype(np.float32),
            "caption_ids": np.asarray(caption_ids, dtype=np.int64),
            "caption_image_ids": np.asarray(caption_owner, dtype=np.int64),
            "caption_vectors": np.concatenate(caption_vectors).astype(np.float32)}


def _rows_of(previous, modality: str, ids: list[int], dim: int) -> np.ndarray:
    if previous is None or not ids:
        return np.zeros((0, dim), np.float32)
    stored_ids = previous.ids(modality)
    position = {int(i): p for p, i in enumerate(stored_ids)}
    return previous.vectors(modality)[[position[i] for i in ids]]


def _previous_captions(previous, image_ids: list[int]) -> list[tuple[int, int]]:
    """(caption id, image id) of the previous version's captions that belong to `image_ids`."""
    if previous is None or not image_ids:
        return []
    wanted = set(image_ids)
    owners = previous.ids("caption_image")
    return [(int(c), int(i)) for c, i in zip(previous.ids("caption"), owners, strict=True) if int(i) in wanted]


def _write_version_files(directory: Path, arrays: dict[str, np.ndarray], row: IndexVersion, encoder: Encoder,
                         options: BuildOptions) -> dict:
    started = time.perf_counter()
    gpu = faiss_index.gpu_available() and options.device != "cpu-only"
    described = {}
    for modality in ("image", "caption"):
        vectors = arrays[f"{modality}_vectors"]
        choice = faiss_index.choose_index(len(vectors), encoder.embed_dim, options.memory_budget,
                                          options.index_type, gpu)
        index = faiss_index.build_index(vectors, choice, gpu)
        value, recall = faiss_index.tune_search_param(index, vectors, options.recall_target)
        faiss_index.write_index(index, str(directory / f"{modality}s.faiss"))
        described[modality] = {"kind": choice.kind, "factory": choice.factory + (",RFlat" if choice.refine else ""),
                               "search_param": faiss_index.search_param_name(index), "search_value": value,
                               "recall": recall, "count": int(len(vectors))}
    for key, array in arrays.items():
        np.save(directory / f"{key}.npy", array)
    calibration = fit_calibration(arrays["image_ids"], arrays["image_vectors"], arrays["caption_image_ids"],
                                  arrays["caption_vectors"])
    manifest = {"name": row.index_name, "version": row.version, "encoder_name": encoder.name,
                "encoder_path": row.encoder_path, "checkpoint_hash": row.checkpoint_hash,
                "embed_dim": encoder.embed_dim, "metric": "inner_product", "gallery": row.gallery,
                "image_index": described["image"], "caption_index": described["caption"],
                "image_count": int(len(arrays["image_ids"])), "caption_count": int(len(arrays["caption_ids"])),
                "calibration": calibration.as_dict() if calibration else None,
                "built_at": utc_now().isoformat(), "build_seconds": time.perf_counter() - started, "gpu": gpu}
    (directory / "encoder.sha256").write_text(row.checkpoint_hash + "\n")
    (directory / store.MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _record_entries(session: Session, row: IndexVersion, arrays: dict[str, np.ndarray]) -> None:
    """The faiss id -> catalogue row mapping of this version, in bulk."""
    entries = [{"version_id": row.id, "modality": "image", "faiss_id": i, "image_id": int(image_id),
                "caption_id": None} for i, image_id in enumerate(arrays["image_ids"])]
    entries += [{"version_id": row.id, "modality": "caption", "faiss_id": i, "image_id": int(image_id),
                 "caption_id": int(caption_id)}
                for i, (caption_id, image_id) in enumerate(zip(arrays["caption_ids"], arrays["caption_image_ids"],
                                                               strict=True))]
    for start in range(0, len(entries), 10_000):
        session.execute(insert(IndexEntry), entries[start:start + 10_000])
