"""Build or update one named index: scan the gallery, encode what changed, stage a new version in
the vector store, record it in the catalogue, then switch it in.

Nothing the serving app reads changes until the end: the catalogue rows are written in one
transaction committed just before the store switches versions, so an interrupted build (crash,
Ctrl-C) leaves the previous version serving, and what it staged is removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from indexer import assembly, catalogue_reads, catalogue_writes, describing
from indexer.catalogue import IndexVersion
from indexer.codes import DEFAULT_RERANK, CodeSpec
from indexer.gallery import GalleryChanges, KnownImage, ScannedFile, scan_changes
from indexer.pipeline import EncodedImages, encode_image_files
from indexer.status import latest_build_source
from indexer.vector_store import IndexSettings, VectorStore, VectorStoreError, Version, open_vector_store
from models.data import DatasetError, SkipReport, load_records
from models.encoders import Encoder, resolve_encoder

log = logging.getLogger(__name__)


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
    describe: bool | None = None       # generated captions for images without any (None: if the encoder can)
    ray_address: str | None = None     # encode images on this Ray cluster ("auto": the local one)
    ray_actors: int | None = None      # encoders on the cluster (default: one per GPU, or per node)
    codes: str | None = None           # float | binary:BITS | catalysed:BYTES (indexer.codes); None: as before
    rerank: int | None = None          # with codes: the nearest by code re-ranked by the float vectors

    def code_spec(self) -> CodeSpec | None:
        return CodeSpec.parse(self.codes, DEFAULT_RERANK if self.rerank is None else self.rerank)

    def resolved_against(self, previous: Version | None) -> BuildOptions:
        """These options with the codes settled: unless given, those of the version being replaced
        (so a reindex keeps them), and so is the re-ranking depth unless given."""
        kept = CodeSpec.from_manifest(previous.manifest) if previous is not None else None
        rerank = self.rerank if self.rerank is not None or kept is None else kept.rerank
        return replace(self, codes=self.codes or (str(kept) if kept else "float"), rerank=rerank)

    def index_settings(self) -> IndexSettings:
        return IndexSettings(self.index_type, self.memory_budget, self.recall_target,
                             gpu=self.device != "cpu-only", codes=self.code_spec(), progress=self.progress)


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
    described_images: int = 0
    describe_images_per_second: float = 0.0

    def summary(self) -> str:
        if self.status == "up-to-date":
            return f"{self.name}: up to date at version {self.version} ({self.changes}); nothing encoded"
        lines = [f"{self.name}: version {self.version} is now current ({self.changes})",
                 f"  {self.image_count} images ({self.encoded_images} encoded at {self.images_per_second:.0f} img/s, "
                 f"{self.reused_images} reused, {self.removed_images} removed), {self.caption_count} captions",
                 f"  image index {self.image_index.get('factory')} (recall@10 {self.image_index.get('recall', 1):.3f}),"
                 f" caption index {self.caption_index.get('factory')}; {self.seconds:.1f} s"]
        if self.described_images:
            lines.append(f"  {self.described_images} captions generated for images without any "
                         f"({self.describe_images_per_second:.1f} img/s)")
        if len(self.skipped):
            lines.append("  " + self.skipped.summary().replace("\n", "\n  "))
        return "\n".join(lines)


def build_index(*, gallery: str, encoder_spec: str, name: str, index_dir: Path,
                sessions: sessionmaker[Session], full: bool = False, options: BuildOptions | None = None,
                vector_store: VectorStore | None = None) -> BuildReport:
    """Build (or incrementally update) index `name` from `gallery` with `encoder_spec`, in
    `vector_store` (faiss files under `index_dir` when None)."""
    options = options or BuildOptions()
    store = vector_store or open_vector_store(None, index_dir)
    _check_codes(options, store)
    started = time.perf_counter()
    gallery_path = Path(gallery)
    if not gallery_path.exists():
        raise DatasetError(f"{gallery}: gallery path not found")
    records = load_records(gallery_path)
    gallery_key = str(gallery_path.resolve())
    encoder, encoder_path, checkpoint_hash = resolve_encoder(encoder_spec, options.device, options.backbone_runtime)
    with store.build_lock(name):
        reconcile(store, name, sessions)
        previous = store.current(name)
        options = options.resolved_against(previous)
        if previous is not None and previous.manifest["checkpoint_hash"] != checkpoint_hash and not full:
            print(f"{name}: the encoder differs from version {previous.number}'s: re-encoding everything")
            full = True
        previous_ids = store.read_arrays(previous, ("image_ids",))["image_ids"] if previous else None
        changes = scan_changes(records, catalogue_reads.known_images(sessions, previous_ids), full=full)
        same_codes = previous is not None and CodeSpec.from_manifest(previous.manifest) == options.code_spec()
        if previous is not None and changes.nothing_to_do and not full and same_codes and not (
                describing.describes(encoder, options.describe)
                and describing.undescribed(sessions, changes, checkpoint_hash)):
            return BuildReport(name, "up-to-date", previous.number, changes=changes.summary(),
                               skipped=changes.missing, seconds=time.perf_counter() - started)
        with _new_version(sessions, store, name, gallery_key, encoder, encoder_path, checkpoint_hash) as (row, stage):
            report = _build_version(sessions, row, stage, changes, _reusable(store, previous, full), encoder,
                                    gallery_key, store, options)
        store.remove_old_versions(name, keep=options.keep_versions)
    report.seconds = time.perf_counter() - started
    return report


def _reusable(store: VectorStore, previous: Version | None, full: bool) -> dict[str, np.ndarray] | None:
    """The previous version's ids and vectors, which an incremental build carries over."""
    return None if previous is None or full else store.read_arrays(previous)


@dataclass
class _Stage:
    """How far a build got, so a failure undoes exactly what is not yet committed."""

    staged: bool = False
    committed: bool = False


@contextmanager
def _new_version(sessions, store: VectorStore, name: str, gallery_key: str, encoder: Encoder, encoder_path: str,
                 checkpoint_hash: str) -> Iterator[tuple[IndexVersion, _Stage]]:
    """A registered 'building' version. On any failure (Ctrl-C included) what is not yet committed
    is undone and the version recorded as failed."""
    row = catalogue_writes.register_build(sessions, name, gallery_key, encoder, encoder_path, checkpoint_hash,
                                          store.versions(name))
    stage = _Stage()
    try:
        yield row, stage
    except BaseException as error:
        if not stage.committed:
            try:
                if stage.staged:
                    store.discard(name, row.version)
            except Exception as cleanup_error:  # e.g. the store is what failed: the next build's reconcile removes it
                log.warning("%s: could not remove staged version %s (%s)", name, row.version, cleanup_error)
            catalogue_writes.mark_failed(sessions, row, f"{type(error).__name__}: {error}")
        # Committed but not switched: the catalogue says the new version is active, and the
        # next build (reconcile) points CURRENT at it; until then the previous one serves.
        raise


def reindex(name: str, *, index_dir: Path, sessions: sessionmaker[Session], full: bool = False,
            encoder_spec: str | None = None, options: BuildOptions | None = None,
            vector_store: VectorStore | None = None) -> BuildReport:
    """Update index `name` from the gallery (and, unless `encoder_spec` names another, the encoder)
    of its newest successful build."""
    gallery, previous_encoder = latest_build_source(sessions, name)
    return build_index(gallery=gallery, encoder_spec=encoder_spec or previous_encoder, name=name,
                       index_dir=index_dir, sessions=sessions, full=full, options=options, vector_store=vector_store)


def reconcile(store: VectorStore, name: str, sessions: sessionmaker[Session]) -> None:
    """Repair what a crash can leave: builds still marked 'building' failed, what they staged, and
    the store's current version behind the catalogue's active one (a crash between the commit and
    the switch). Called by every build, holding the build lock, before it decides anything."""
    store.remove_abandoned(name)
    active = catalogue_writes.fail_interrupted_builds(sessions, name)
    if active is not None:  # staged, never committed (killed between the two): not a version to keep
        for orphan in [number for number in store.versions(name) if number > active]:
            with suppress(ValueError):  # current after all (a store shared with another catalogue): leave it
                store.discard(name, orphan)
    try:
        current = store.current(name)
    except FileNotFoundError:  # CURRENT names a directory that is gone (e.g. lost in a power cut)
        current = None
    complete = store.versions(name)
    if active is not None and active in complete and (current is None or current.number != active):
        store.switch(name, active)
    elif current is None and complete and store.stamp(name) is not None:
        store.switch(name, complete[-1])  # a dangling pointer: the newest complete version


def _build_version(sessions, row: IndexVersion, stage: _Stage, changes: GalleryChanges,
                   previous: dict[str, np.ndarray] | None, encoder: Encoder, gallery_key: str, store: VectorStore,
                   options: BuildOptions) -> BuildReport:
    to_encode = changes.new + [scanned for scanned, _ in changes.changed]
    encoded = _encode_images(encoder, row, [s.record.path for s in to_encode], options)
    described = (describing.describe_for_build(sessions, encoder, row.checkpoint_hash, to_encode, encoded, changes,
                                               batch_size=options.batch_size, workers=options.workers,
                                               progress=options.progress)
                 if describing.describes(encoder, options.describe) else describing.NOTHING)
    skipped = SkipReport(changes.missing.skipped + encoded.report.skipped + described.report.skipped)
    with sessions() as session, session.begin():
        image_rows = catalogue_writes.write_image_rows(session, gallery_key, to_encode, encoded, changes)
        kept = _reused(changes)
        captions, recaptioned = catalogue_writes.write_caption_rows(session, to_encode, image_rows, changes,
                                                                    previous)
        if described.captions:
            row_of = {**{s.record.image_id: k.row_id for s, k in kept}, **image_rows}
            generated = catalogue_writes.write_generated_captions(
                session, {row_of[path]: text for path, text in described.captions.items() if path in row_of},
                row.checkpoint_hash)
            captions += [caption for caption in generated if caption[2]]  # an empty caption is kept, not indexed
            recaptioned |= {image_id for _, image_id, _ in generated}
        arrays = assembly.assemble(previous, encoder, image_rows, encoded, kept, captions, recaptioned,
                                   options.progress)
        removed_ids = [k.row_id for _, k in changes.removed]
        removed_ids += [k.row_id for s, k in changes.changed if s.record.image_id not in image_rows]
        catalogue_writes.delete_unshared_images(session, row.index_name, removed_ids)
        manifest = _stage_and_activate(session, row, stage, arrays, encoder, store, options,
                                       encoded_images=len(encoded.kept), skipped_files=len(skipped))
    stage.committed = True
    store.switch(row.index_name, row.version)
    return BuildReport(row.index_name, "built", row.version, len(arrays["image_ids"]), len(arrays["caption_ids"]),
                       len(encoded.kept), len(kept), len(removed_ids), changes.summary(), manifest["image_index"],
                       manifest["caption_index"], skipped, 0.0, encoded.images_per_second,
                       sum(bool(text) for text in described.captions.values()), described.images_per_second)


def _encode_images(encoder: Encoder, row: IndexVersion, paths: list[Path], options: BuildOptions) -> EncodedImages:
    """In this process (decoding in worker processes), or on a Ray cluster."""
    if options.ray_address is None or not paths:
        return encode_image_files(encoder, paths, options.batch_size, options.workers, options.progress)
    from indexer.ray_encoding import encode_image_files_on_ray

    return encode_image_files_on_ray(row.encoder_path, row.checkpoint_hash, paths, address=options.ray_address,
                                     image_size=encoder.image_size, embed_dim=encoder.embed_dim,
                                     batch_size=options.batch_size, actors=options.ray_actors,
                                     device=options.device, runtime=options.backbone_runtime,
                                     progress=options.progress)


def _stage_and_activate(session: Session, row: IndexVersion, stage: _Stage, arrays: dict[str, np.ndarray],
                        encoder: Encoder, store: VectorStore, options: BuildOptions, **counts: int) -> dict:
    """Stage the version in the store and mark it active in the catalogue (the caller's transaction
    commits that; the store switches after the commit)."""
    manifest = store.stage(row.index_name, row.version, arrays, assembly.describe_version(row, encoder, arrays),
                           options.index_settings())
    stage.staged = True
    catalogue_writes.record_entries(session, row, arrays)
    catalogue_writes.activate(session, row, manifest, len(arrays["image_ids"]), len(arrays["caption_ids"]),
                              **counts)
    return manifest


def publish_vectors(*, name: str, index_dir: Path, sessions: sessionmaker[Session], gallery: str,
                    encoder_spec: str, arrays: dict[str, np.ndarray], options: BuildOptions | None = None,
                    vector_store: VectorStore | None = None) -> int:
    """Publish a version of index `name` from vectors computed elsewhere (benchmarks, embeddings
    imported from another tool) and return its number. `arrays` holds image_ids/image_vectors and
    caption_ids/caption_image_ids/caption_vectors; the catalogue rows those ids name must exist."""
    options = options or BuildOptions()
    store = vector_store or open_vector_store(None, index_dir)
    _check_codes(options, store)
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
    with store.build_lock(name):
        reconcile(store, name, sessions)
        options = options.resolved_against(store.current(name))
        with _new_version(sessions, store, name, gallery, encoder, encoder_path, checkpoint_hash) as (row, stage):
            with sessions() as session, session.begin():
                _stage_and_activate(session, row, stage, arrays, encoder, store, options)
            stage.committed = True
            store.switch(name, row.version)
        store.remove_old_versions(name, keep=options.keep_versions)
    return row.version


def _check_codes(options: BuildOptions, store: VectorStore) -> None:
    """A misspelt --codes, or codes for a store that cannot hold them, fail before anything is encoded."""
    if options.code_spec() is not None and store.kind != "faiss":
        raise VectorStoreError(f"compact codes ({options.codes}) are built by the faiss store only, not {store.kind}")


def _reused(changes: GalleryChanges) -> list[tuple[ScannedFile, KnownImage]]:
    """Images whose vectors carry over from the previous version."""
    return changes.unchanged + changes.captions_changed


