"""Index builds end to end on SQLite and PostgreSQL: full, incremental, interrupted, bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from indexer import version_dirs
from indexer.build import BuildOptions, build_index, publish_vectors
from indexer.catalogue import CaptionRow, ImageRow, IndexEntry, IndexVersion
from indexer.db import DatabaseError, session_factory
from indexer.faiss_store import FaissFileStore
from indexer.status import index_status
from indexer.vector_store import Version
from models import CheckpointError, load_encoder
from models.data import DatasetError
from tests.conftest import ROOT

QUIET = BuildOptions(progress=False, workers=0)


def _build(gallery, checkpoint, index_dir, sessions, **kwargs):
    return build_index(gallery=str(gallery), encoder_spec=str(checkpoint), name="main", index_dir=index_dir,
                       sessions=sessions, options=kwargs.pop("options", QUIET), **kwargs)


def _count(sessions, table) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(table))


def _search_caption(index_dir: Path, checkpoint: Path, text: str) -> int:
    """The caption row id the current version of index "main" returns first for `text`."""
    store = FaissFileStore(index_dir)
    served = store.open(store.current("main"))
    _, found = served.search("caption", load_encoder(checkpoint).encode_text([text]).numpy(), 1)
    return int(found[0, 0])


def test_full_build_writes_version_manifest_and_catalogue(gallery, encoder_checkpoint, tmp_path, sessions):
    report = _build(gallery, encoder_checkpoint, tmp_path / "idx", sessions)
    assert report.status == "built" and report.version == 1
    assert report.image_count == 30 and report.caption_count == 150 and report.encoded_images == 30
    version = FaissFileStore(tmp_path / "idx").current("main")
    manifest = version.manifest
    assert manifest["image_count"] == 30 and manifest["embed_dim"] == 32 and manifest["metric"] == "inner_product"
    assert manifest["image_index"]["factory"] == "Flat" and manifest["encoder_name"] == "vse_tiny_gru"
    assert (Path(manifest["location"]) / "encoder.sha256").read_text().strip() == manifest["checkpoint_hash"]
    assert _count(sessions, ImageRow) == 30 and _count(sessions, CaptionRow) == 150
    assert _count(sessions, IndexEntry) == 180
    with sessions() as session:
        row = session.scalars(select(IndexVersion)).one()
        assert (row.status, row.image_count, row.caption_count) == ("active", 30, 150)
        caption = session.scalars(select(CaptionRow).order_by(CaptionRow.id)).first()
        image = session.get(ImageRow, caption.image_id)
        assert image.width == 32 and len(image.content_hash) == 64
    # Each caption's own vector finds that very caption first (exact index, identical vectors).
    assert _search_caption(tmp_path / "idx", encoder_checkpoint, caption.text) in _same_text_ids(sessions, caption.text)
    assert not list((tmp_path / "idx" / "main" / "versions").glob(".tmp-*"))


def _same_text_ids(sessions, text: str) -> set[int]:
    with sessions() as session:
        return set(session.scalars(select(CaptionRow.id).where(CaptionRow.text == text)).all())


def test_incremental_update_encodes_only_what_changed(gallery, encoder_checkpoint, tmp_path, sessions):
    index_dir = tmp_path / "idx"
    _build(gallery, encoder_checkpoint, index_dir, sessions)
    again = _build(gallery, encoder_checkpoint, index_dir, sessions)
    assert again.status == "up-to-date" and again.version == 1 and again.encoded_images == 0

    images = sorted((gallery / "images").glob("*.png"))
    dataset = json.loads((gallery / "dataset.json").read_text())
    Image.new("RGB", (32, 32), (250, 0, 0)).save(images[0])             # changed content
    os.utime(images[1], ns=(1, 1))                                       # touched, same bytes
    images[2].unlink()                                                    # deleted
    dataset["images"][3]["sentences"] = [{"raw": "a brand new caption"}]  # new captions only
    new_entry = json.loads(json.dumps(dataset["images"][4]))              # a new image
    Image.new("RGB", (32, 32), (0, 0, 250)).save(gallery / "images" / "added.png")
    new_entry.update(filename="added.png", imgid=999, sentences=[{"raw": "a plain blue picture"}])
    dataset["images"].append(new_entry)
    (gallery / "dataset.json").write_text(json.dumps(dataset))

    report = _build(gallery, encoder_checkpoint, index_dir, sessions)
    assert report.status == "built" and report.version == 2
    assert report.encoded_images == 2            # the changed one and the new one
    assert report.reused_images == 28 and report.removed_images == 1
    assert report.image_count == 30 and report.caption_count == 30 * 5 - 5 - 4 + 1
    assert [Path(p).name for p, _ in report.skipped.skipped] == [images[2].name]  # the deleted file, reported
    store = FaissFileStore(index_dir)
    stored = store.current("main")
    assert stored.number == 2 and len(store.read_arrays(stored)["image_ids"]) == 30
    assert _search_caption(index_dir, encoder_checkpoint, "a brand new caption") in _same_text_ids(
        sessions, "a brand new caption")
    assert _count(sessions, ImageRow) == 30
    with sessions() as session:
        statuses = dict(session.execute(select(IndexVersion.version, IndexVersion.status)).all())
        assert statuses == {1: "superseded", 2: "active"}
        assert session.scalar(select(func.count()).select_from(IndexEntry).where(IndexEntry.version_id == 1)) < 180
    # The reused vectors are the previous version's, row for row.
    previous = store.read_arrays(Version("main", 1, {}))
    current = store.read_arrays(stored)
    old = dict(zip(previous["image_ids"].tolist(), previous["image_vectors"], strict=True))
    new = dict(zip(current["image_ids"].tolist(), current["image_vectors"], strict=True))
    shared = set(old) & set(new)
    assert len(shared) == 29 and sum(np.array_equal(old[i], new[i]) for i in shared) == 28


def test_two_encoders_can_index_one_gallery(gallery, encoder_checkpoint, tmp_path, sessions):
    from models import create_encoder

    other = create_encoder("vse_tiny_gru", vocab=load_encoder(encoder_checkpoint).text_tower.vocab,
                           overrides={"embed_dim": 16, "text": {"word_dim": 8}}).save(tmp_path / "other.pt")
    _build(gallery, encoder_checkpoint, tmp_path / "idx", sessions)
    second = build_index(gallery=str(gallery), encoder_spec=str(other), name="second", index_dir=tmp_path / "idx",
                         sessions=sessions, options=QUIET)
    assert second.image_count == 30 and _count(sessions, ImageRow) == 30  # the rows are shared
    sorted((gallery / "images").glob("*.png"))[0].unlink()
    assert _build(gallery, encoder_checkpoint, tmp_path / "idx", sessions).removed_images == 1
    assert _count(sessions, ImageRow) == 30  # still served by "second": kept
    assert FaissFileStore(tmp_path / "idx").current("second").manifest["image_count"] == 30


def test_captions_removed_entirely(gallery, encoder_checkpoint, tmp_path, sessions):
    _build(gallery, encoder_checkpoint, tmp_path / "idx", sessions)
    dataset = json.loads((gallery / "dataset.json").read_text())
    dataset["images"][0]["sentences"] = []
    (gallery / "dataset.json").write_text(json.dumps(dataset))
    report = _build(gallery, encoder_checkpoint, tmp_path / "idx", sessions)
    assert report.image_count == 30 and report.caption_count == 145 and report.encoded_images == 0


def test_crash_between_commit_and_switch_is_repaired_by_the_next_build(gallery, encoder_checkpoint, tmp_path,
                                                                     sessions, monkeypatch):
    index_dir = tmp_path / "idx"
    _build(gallery, encoder_checkpoint, index_dir, sessions)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(sorted((gallery / "images").glob("*.png"))[0])
    real_switch = FaissFileStore.switch

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(FaissFileStore, "switch", crash)
    with pytest.raises(KeyboardInterrupt):
        _build(gallery, encoder_checkpoint, index_dir, sessions)
    assert FaissFileStore(index_dir).current("main").number == 1  # the previous version still serves
    with sessions() as session:
        assert session.scalar(select(IndexVersion.status).where(IndexVersion.version == 2)) == "active"
    monkeypatch.setattr(FaissFileStore, "switch", real_switch)
    report = _build(gallery, encoder_checkpoint, index_dir, sessions)  # reconcile first points CURRENT at v2
    assert report.status == "up-to-date" and report.version == 2


def test_fresh_catalogue_over_old_index_dir_never_reuses_a_version(gallery, encoder_checkpoint, tmp_path, sessions):
    _build(gallery, encoder_checkpoint, tmp_path / "idx", sessions)
    fresh = session_factory(f"sqlite:///{tmp_path / 'fresh.db'}")
    report = _build(gallery, encoder_checkpoint, tmp_path / "idx", fresh, full=True)
    assert report.version == 2
    assert sorted(p.name for p in (tmp_path / "idx" / "main" / "versions").iterdir()) == ["v000001", "v000002"]


def test_unreadable_file_is_skipped_not_fatal(gallery, encoder_checkpoint, tmp_path, sessions, monkeypatch):
    from indexer import gallery as gallery_module

    target = sorted((gallery / "images").glob("*.png"))[0]
    real_hash = gallery_module.file_sha256

    def denied(path, *args):  # what a file without read permission does (root would read it anyway)
        if Path(path) == target:
            raise PermissionError(13, "Permission denied")
        return real_hash(path, *args)

    monkeypatch.setattr(gallery_module, "file_sha256", denied)
    report = _build(gallery, encoder_checkpoint, tmp_path / "idx", sessions)
    assert report.image_count == 29
    assert report.skipped.skipped == [(str(target), "cannot read file (Permission denied)")]


def test_full_rebuild_re_encodes_everything(gallery, encoder_checkpoint, tmp_path, sessions):
    _build(gallery, encoder_checkpoint, tmp_path / "idx", sessions)
    report = _build(gallery, encoder_checkpoint, tmp_path / "idx", sessions, full=True)
    assert report.version == 2 and report.encoded_images == 30 and report.reused_images == 0


def test_interrupted_build_leaves_previous_version_serving(gallery, encoder_checkpoint, tmp_path, sessions,
                                                          monkeypatch):
    index_dir = tmp_path / "idx"
    _build(gallery, encoder_checkpoint, index_dir, sessions)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(sorted((gallery / "images").glob("*.png"))[0])
    before = (index_dir / "main" / version_dirs.POINTER).read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("indexer.faiss_index.build_index", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(gallery, encoder_checkpoint, index_dir, sessions)
    assert (index_dir / "main" / version_dirs.POINTER).read_text() == before
    assert FaissFileStore(index_dir).current("main").number == 1
    assert not list((index_dir / "main" / "versions").glob(".tmp-*"))
    assert sorted(p.name for p in (index_dir / "main" / "versions").iterdir()) == ["v000001"]
    with sessions() as session:
        assert dict(session.execute(select(IndexVersion.version, IndexVersion.status)).all()) == {
            1: "active", 2: "failed"}
        assert session.scalar(select(func.count()).select_from(IndexEntry)) == 180  # untouched
    status = index_status(FaissFileStore(index_dir), sessions, "main")
    assert status.current_version == 1 and status.failed[0][0] == 2 and "KeyboardInterrupt" in status.failed[0][1]
    monkeypatch.undo()
    assert _build(gallery, encoder_checkpoint, index_dir, sessions).version == 3  # and the next build works


def test_bad_files_are_skipped_and_reported(gallery, encoder_checkpoint, tmp_path, sessions):
    images = sorted((gallery / "images").glob("*.png"))
    images[0].write_bytes(b"")                                   # zero bytes
    images[1].write_text("not an image at all")                  # not an image
    images[2].write_bytes(images[3].read_bytes()[:60])           # truncated
    Image.new("1", (20000, 20000)).save(images[4], format="PNG")  # decompression bomb
    report = _build(gallery, encoder_checkpoint, tmp_path / "idx", sessions)
    assert report.status == "built" and report.image_count == 26
    reasons = {Path(path).name: reason for path, reason in report.skipped.skipped}
    assert set(reasons) == {p.name for p in images[:3]} | {images[4].name}
    assert "empty file" in reasons[images[0].name] and "too large" in reasons[images[4].name]
    assert "skipped 4 file(s)" in report.summary()


def test_clear_errors_for_bad_arguments(gallery, encoder_checkpoint, tmp_path, sessions):
    with pytest.raises(DatasetError, match="gallery path not found"):
        _build(tmp_path / "nowhere", encoder_checkpoint, tmp_path / "idx", sessions)
    (tmp_path / "broken.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        _build(gallery, tmp_path / "broken.pt", tmp_path / "idx", sessions)
    with pytest.raises(ValueError, match="untrained architecture"):
        _build(gallery, "vse_tiny_gru", tmp_path / "idx", sessions)


def test_unreachable_database_is_a_clear_error(tmp_path):
    with pytest.raises(DatabaseError, match="cannot reach the database"):
        session_factory("postgresql+psycopg://nobody@/nodb?host=/nonexistent&port=1")


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=300)


@pytest.mark.slow
def test_cli_index_status_reindex(gallery, encoder_checkpoint, tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'cat.db'}", "INDEX_DIR": str(tmp_path / "idx")}
    built = _cli(env, "index", "--gallery", str(gallery), "--encoder", str(encoder_checkpoint), "--name", "demo",
                 "--workers", "0")
    assert built.returncode == 0, built.stderr
    assert "version 1 is now current" in built.stdout and "encode images" in built.stderr  # progress bar
    status = _cli(env, "admin", "status")
    assert "demo: version 1, 30 images, 150 captions, encoder vse_tiny_gru" in status.stdout
    reindexed = _cli(env, "admin", "reindex")
    assert reindexed.returncode == 0 and "up to date at version 1" in reindexed.stdout
    missing = _cli(env, "index", "--gallery", str(tmp_path / "none"), "--encoder", str(encoder_checkpoint))
    assert missing.returncode == 1 and "gallery path not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_db = _cli({**env, "DATABASE_URL": "postgresql+psycopg://x@/y?host=/nonexistent&port=1"}, "admin", "status")
    assert bad_db.returncode == 1 and "cannot reach the database" in bad_db.stderr
    assert len(bad_db.stderr.strip().splitlines()) == 1


def _catalogue_rows(sessions, count: int) -> tuple[list[int], list[int]]:
    with sessions() as session, session.begin():
        images = [ImageRow(gallery="/imported", path=f"{i}.jpg", file_path=f"/imported/{i}.jpg", content_hash="0" * 64,
                           file_size=1, file_mtime_ns=0, width=8, height=8) for i in range(count)]
        session.add_all(images)
        session.flush()
        captions = [CaptionRow(image_id=image.id, text=f"caption {i}") for i, image in enumerate(images)]
        session.add_all(captions)
        session.flush()
        return [i.id for i in images], [c.id for c in captions]


def test_publish_vectors_serves_precomputed_embeddings(encoder_checkpoint, tmp_path, sessions):
    image_ids, caption_ids = _catalogue_rows(sessions, 50)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    arrays = {"image_ids": np.asarray(image_ids), "image_vectors": vectors, "caption_ids": np.asarray(caption_ids),
              "caption_image_ids": np.asarray(image_ids), "caption_vectors": vectors[::-1].copy()}
    number = publish_vectors(name="imported", index_dir=tmp_path / "idx", sessions=sessions, gallery="/imported",
                             encoder_spec=str(encoder_checkpoint), arrays=arrays)
    store = FaissFileStore(tmp_path / "idx")
    loaded = store.open(store.current("imported"))
    assert number == 1 and loaded.manifest["image_count"] == 50
    scores, ids = loaded.search("image", vectors[7:8], 1)
    assert ids[0, 0] == image_ids[7] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert loaded.search("caption", vectors[7:8], 1)[1][0, 0] == caption_ids[42]
    with sessions() as session:
        assert session.scalar(select(IndexVersion.status).where(IndexVersion.index_name == "imported")) == "active"
    arrays["image_vectors"] = vectors[:, :16]
    with pytest.raises(ValueError, match="16,\\)-d; .* 32 dimensions"):
        publish_vectors(name="imported", index_dir=tmp_path / "idx", sessions=sessions, gallery="/imported",
                        encoder_spec=str(encoder_checkpoint), arrays=arrays)
    arrays["image_vectors"] = vectors[:40]
    with pytest.raises(ValueError, match="50 image ids for 40 vectors"):
        publish_vectors(name="imported", index_dir=tmp_path / "idx", sessions=sessions, gallery="/imported",
                        encoder_spec=str(encoder_checkpoint), arrays=arrays)
    arrays["image_vectors"] = vectors * 2
    with pytest.raises(ValueError, match="must be L2-normalised"):
        publish_vectors(name="imported", index_dir=tmp_path / "idx", sessions=sessions, gallery="/imported",
                        encoder_spec=str(encoder_checkpoint), arrays=arrays)
    assert FaissFileStore(tmp_path / "idx").current("imported").number == 1  # the bad calls changed nothing


def test_a_shipped_encoder_indexes_by_name(gallery, encoder_checkpoint, tmp_path, sessions, monkeypatch):
    from models.encoders import registry, resolve_encoder

    shipped = tmp_path / "pretrained"
    packed = _cli({}, "pack", str(encoder_checkpoint), "--out", str(shipped / "tiny_photos.pt"))
    assert packed.returncode == 0, packed.stderr
    assert "weights from packages: none" in packed.stdout  # nothing of this encoder comes from a package
    monkeypatch.setattr(registry, "SHIPPED_DIR", shipped)
    encoder, where, _ = resolve_encoder("tiny_photos")
    assert where == str((shipped / "tiny_photos.pt").resolve()) and encoder.name == "vse_tiny_gru"
    report = build_index(gallery=str(gallery), encoder_spec="tiny_photos", name="photos", index_dir=tmp_path / "idx",
                         sessions=sessions, options=QUIET)
    assert report.image_count == 30
    with pytest.raises(ValueError, match="shipped trained encoder"):
        resolve_encoder("vse_tiny_gru")  # an architecture, not a trained encoder


def test_a_build_killed_with_sigkill_leaves_no_temporary_directory_after_the_next_build(
        gallery, encoder_checkpoint, tmp_path, sessions, database_url):
    """kill -9 gives a build no chance to clean up: the next build, even one with nothing to
    encode, removes what it left in versions/ and the killed version is marked failed."""
    import signal
    import subprocess
    import sys

    index_dir = tmp_path / "idx"
    _build(gallery, encoder_checkpoint, index_dir, sessions)
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal
import indexer.faiss_index
from indexer.build import BuildOptions, build_index
from indexer.db import session_factory
indexer.faiss_index.build_index = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
build_index(gallery={str(gallery)!r}, encoder_spec={str(encoder_checkpoint)!r}, name="main",
            index_dir=__import__("pathlib").Path({str(index_dir)!r}), sessions=session_factory({database_url!r}),
            full=True, options=BuildOptions(progress=False, workers=0))
"""], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list((index_dir / "main" / "versions").glob(".tmp-*"))  # what kill -9 leaves behind
    report = _build(gallery, encoder_checkpoint, index_dir, sessions)
    assert report.status == "up-to-date"  # nothing to encode: it still cleans up
    assert not list((index_dir / "main" / "versions").glob(".tmp-*"))
    assert FaissFileStore(index_dir).current("main").number == 1
