"""Generated captions at index time: a gallery folder with no captions, indexed with an encoder
that describes images, gets one caption per image (catalogue source "generated", tied to the
encoder), encoded into the caption index; a rebuild regenerates only what changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from indexer.build import BuildOptions, build_index
from indexer.catalogue import CaptionRow
from indexer.faiss_store import FaissFileStore
from models import create_encoder
from models.data import load_records
from models.vocab import Vocabulary


@pytest.fixture
def folder_gallery(gallery: Path, tmp_path: Path) -> Path:
    """The scene images alone: a plain folder, no captions anywhere."""
    folder = tmp_path / "photos"
    shutil.copytree(gallery / "images", folder)
    return folder


@pytest.fixture(scope="module")
def describing_checkpoint(tmp_path_factory, scenes) -> Path:
    vocab = Vocabulary.build(c for r in load_records(scenes) for c in r.captions)
    return create_encoder("gxn_tiny", vocab=vocab).save(tmp_path_factory.mktemp("gxn") / "gxn.pt")


def _build(folder: Path, checkpoint: Path, tmp_path: Path, sessions, **options):
    return build_index(gallery=str(folder), encoder_spec=str(checkpoint), name="photos", index_dir=tmp_path / "idx",
                       sessions=sessions, options=BuildOptions(progress=False, workers=0, **options))


def _generated(sessions) -> dict[int, tuple[str, str]]:
    with sessions() as session:
        rows = session.execute(select(CaptionRow.image_id, CaptionRow.text, CaptionRow.generated_by)
                               .where(CaptionRow.source == "generated")).all()
    return {image_id: (text, by) for image_id, text, by in rows}


def _spoken(generated: dict[int, tuple[str, str]]) -> set[int]:
    """Images whose generated caption says something (an untrained decoder may end at once: such a
    caption is kept in the catalogue, so it is not asked for again, but not indexed)."""
    return {image_id for image_id, (text, _) in generated.items() if text}


def test_a_folder_without_captions_gets_generated_ones(folder_gallery, describing_checkpoint, tmp_path, sessions):
    report = _build(folder_gallery, describing_checkpoint, tmp_path, sessions)
    generated = _generated(sessions)
    assert report.image_count == 30 and len(generated) == 30  # one generated caption per image
    assert report.described_images == report.caption_count == len(_spoken(generated)) > 0
    assert f"{report.described_images} captions generated for images without any" in report.summary()
    store = FaissFileStore(tmp_path / "idx")
    arrays = store.read_arrays(store.current("photos"))
    assert sorted(arrays["caption_image_ids"].tolist()) == sorted(_spoken(generated))  # each indexed once
    assert {by for _, by in generated.values()} == {store.current("photos").manifest["checkpoint_hash"]}

    again = _build(folder_gallery, describing_checkpoint, tmp_path, sessions)
    assert again.status == "up-to-date" and _generated(sessions) == generated  # nothing regenerated

    Image.new("RGB", (32, 32), (250, 250, 0)).save(sorted(folder_gallery.glob("*.png"))[4])
    report = _build(folder_gallery, describing_checkpoint, tmp_path, sessions)
    after = _generated(sessions)
    assert report.encoded_images == 1 and len(after) == 30
    assert sum(after.get(i) == g for i, g in generated.items()) >= 29  # the 29 unchanged images kept theirs
    assert report.caption_count == len(_spoken(after))


def test_describing_can_be_turned_off_and_on_later(folder_gallery, describing_checkpoint, tmp_path, sessions):
    report = _build(folder_gallery, describing_checkpoint, tmp_path, sessions, describe=False)
    assert report.described_images == 0 and report.caption_count == 0 and _generated(sessions) == {}
    report = _build(folder_gallery, describing_checkpoint, tmp_path, sessions)  # on again (the default)
    assert report.status == "built" and report.encoded_images == 0  # no file changed: captions alone
    assert len(_generated(sessions)) == 30 and report.caption_count == len(_spoken(_generated(sessions)))
    assert _build(folder_gallery, describing_checkpoint, tmp_path, sessions).status == "up-to-date"


def test_images_with_human_captions_are_not_described(gallery, describing_checkpoint, tmp_path, sessions):
    report = build_index(gallery=str(gallery), encoder_spec=str(describing_checkpoint), name="scenes",
                         index_dir=tmp_path / "idx", sessions=sessions,
                         options=BuildOptions(progress=False, workers=0))
    assert report.described_images == 0 and report.caption_count == 150 and _generated(sessions) == {}


def test_an_encoder_that_cannot_describe_writes_no_captions(folder_gallery, encoder_checkpoint, tmp_path, sessions):
    report = _build(folder_gallery, encoder_checkpoint, tmp_path, sessions)
    assert report.image_count == 30 and report.described_images == 0 and report.caption_count == 0
