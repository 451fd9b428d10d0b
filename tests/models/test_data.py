"""Dataset loading: Karpathy JSON, image folders, synthetic scenes, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data import DatasetError, decode_split, generate_scenes, load_records, open_image, select_split
from models.data.images import BadImageError, cached_decode
from models.data.synthetic import COLOURS, SHAPES
from tests.conftest import flickr8k_dir, needs_flickr8k


def _png(path: Path, colour=(200, 10, 10), size=16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def _karpathy(tmp_path: Path, entries: list) -> Path:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"dataset": "t", "images": entries}))
    return path


# --- Karpathy JSON ---------------------------------------------------------------------------
def test_karpathy_reads_splits_captions_and_paths(tmp_path):
    _png(tmp_path / "images" / "a.jpg")
    _png(tmp_path / "images" / "val2014" / "b.jpg")
    json_path = _karpathy(tmp_path, [
        {"filename": "a.jpg", "imgid": 0, "split": "restval", "sentences": [{"raw": "A red thing ."}, {"raw": " "}]},
        {"filepath": "val2014", "filename": "b.jpg", "imgid": 1, "split": "test", "sentences": [{"raw": "b"}]},
    ])
    records = load_records(tmp_path)  # the folder holding dataset.json
    assert [r.split for r in records] == ["train", "test"]  # restval is training data
    assert records[0].captions == ("A red thing .",)  # blank captions dropped
    assert records[1].path == tmp_path / "images" / "val2014" / "b.jpg"
    assert load_records(json_path) == records
    assert [r.image_id for r in select_split(records, "test")] == ["val2014/b.jpg"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"images": 3}', "'images' list"),
    ('{"images": [{"split": "train"}]}', "images[0] has no 'filename'"),
    ('{"images": [{"filename": "x.jpg", "split": "dev", "sentences": []}]}', "unknown split 'dev'"),
    ('{"images": [{"filename": "x.jpg", "sentences": ["raw"]}]}', "'sentences' must be a list"),
])
def test_karpathy_malformed_json_names_file_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError) as error:
        load_records(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_missing_dataset_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_records(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown split"):
        select_split([], "dev")


# --- plain folders ---------------------------------------------------------------------------
def test_folder_with_sidecar_captions(tmp_path):
    _png(tmp_path / "cat.png")
    _png(tmp_path / "sub" / "dog.jpg")
    (tmp_path / "cat.txt").write_text("a cat\n\n a sleeping cat \n")
    records = load_records(tmp_path)
    assert [r.image_id for r in records] == ["cat.png", "sub/dog.jpg"]
    assert records[0].captions == ("a cat", "a sleeping cat")
    assert records[1].captions == ()  # captions are optional


def test_folder_with_csv_and_jsonl_captions(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "captions.csv").write_text('filename,caption\na.png,"one, with comma"\na.png,two\nb.png,three\n')
    records = load_records(tmp_path)
    assert records[0].captions == ("one, with comma", "two") and records[1].captions == ("three",)
    jsonl = tmp_path / "other.jsonl"
    jsonl.write_text('{"filename": "b.png", "caption": "from jsonl"}\n\n')
    from models.data.folder import load_image_folder

    assert load_image_folder(tmp_path, jsonl)[1].captions == ("from jsonl",)


@pytest.mark.parametrize("name, content, message", [
    ("captions.csv", "file,text\na.png,x\n", "'filename' and 'caption' columns"),
    ("captions.csv", "filename,caption\na.png\n", "line 2 has fewer than two columns"),
    ("captions.jsonl", '{"filename": "a.png"}\n', "line 1 needs string 'filename' and 'caption'"),
    ("captions.jsonl", "{oops\n", "line 1 is not valid JSON"),
])
def test_malformed_caption_tables_name_file_and_line(tmp_path, name, content, message):
    _png(tmp_path / "a.png")
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError) as error:
        load_records(tmp_path)
    assert name in str(error.value) and message in str(error.value)


# --- synthetic scenes ------------------------------------------------------------------------
def test_synthetic_scenes_are_deterministic_and_described(tmp_path, capsys):
    first = generate_scenes(tmp_path / "a", 30, seed=7, image_size=48, progress=True)
    progress = capsys.readouterr().err  # a progress bar, as the demo shows while it draws
    assert "drawing scenes" in progress and "30/30" in progress
    second = generate_scenes(tmp_path / "b", 30, seed=7, image_size=48)
    other = generate_scenes(tmp_path / "c", 30, seed=8, image_size=48)
    records, again = load_records(first), load_records(second)
    assert [r.captions for r in records] == [r.captions for r in again]
    for a, b in zip(records, again, strict=True):
        assert np.array_equal(np.asarray(Image.open(a.path)), np.asarray(Image.open(b.path)))
    assert [r.captions for r in records] != [r.captions for r in load_records(other)]
    assert {r.split for r in records} == {"train", "val", "test"}
    for record in records:
        objects = record.attributes["objects"]
        assert 1 <= len(objects) <= 3 and len(record.captions) == 5
        assert len(set(record.captions)) >= 3  # differently worded
        for obj in objects:  # every caption names only objects that are in the picture
            assert obj["colour"] in COLOURS and obj["shape"] in SHAPES
        present = {(o["colour"], o["shape"]) for o in objects}
        for caption in record.captions:
            words = set(caption.replace(",", " ").replace(":", " ").split())
            assert any(colour in words and shape in words for colour, shape in present), caption
            named = {(c, s) for c in COLOURS for s in SHAPES if f"{c} {s}" in caption}
            assert named <= present, caption


def test_synthetic_single_object_pixels_match_its_colour(tmp_path):
    records = load_records(generate_scenes(tmp_path, 40, seed=1, image_size=64, max_objects=1))
    for record in records[:10]:
        obj = record.attributes["objects"][0]
        pixels = np.asarray(Image.open(record.path)).reshape(-1, 3).astype(int)
        distance = np.abs(pixels - np.array(COLOURS[obj["colour"]])).sum(axis=1)
        assert (distance < 10).mean() > 0.02  # the object's colour covers a visible area


# --- bad images ------------------------------------------------------------------------------
@pytest.fixture
def bad_gallery(tmp_path) -> Path:
    folder = tmp_path / "gallery"
    _png(folder / "good1.png")
    _png(folder / "good2.png", (0, 0, 255))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    good = (folder / "good1.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")  # 400 MP, tiny on disk
    for name in ("good1", "good2", "empty", "text", "truncated", "bomb"):
        (folder / f"{name}.txt").write_text(f"caption of {name}")
    return folder


def test_open_image_names_each_problem(bad_gallery):
    assert open_image(bad_gallery / "good1.png").size == (16, 16)
    expectations = {"empty.png": "empty file", "text.jpg": "not a readable image",
                    "truncated.png": "corrupt or truncated", "bomb.png": "too large", "missing.png": "not found"}
    for name, reason in expectations.items():
        with pytest.raises(BadImageError, match=reason):
            open_image(bad_gallery / name)


def test_bad_images_are_skipped_and_reported_not_fatal(bad_gallery, tmp_path):
    records = load_records(bad_gallery)
    split = decode_split(records, "train", 8, cache_dir=tmp_path / "cache", progress=False)
    assert sorted(r.image_id for r in split.records) == ["good1.png", "good2.png"]
    assert split.pixels.shape == (2, 3, 8, 8) and split.pixels.dtype.is_floating_point is False
    skipped = {Path(path).name for path, _ in split.report.skipped}
    assert skipped == {"empty.png", "text.jpg", "truncated.png", "bomb.png"}
    assert "skipped 4 file(s)" in split.report.summary()
    assert split.pairs.captions == ["caption of good1", "caption of good2"]


def test_decode_cache_is_reused_and_invalidated(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", (i * 40, 0, 0)) for i in range(3)]
    first = cached_decode(paths, 8, tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    again = cached_decode(paths, 8, tmp_path / "cache", progress=False)
    assert np.array_equal(first[0].numpy(), again[0].numpy())
    _png(paths[0], (255, 255, 255), size=20)  # a changed file has a new fingerprint
    changed = cached_decode(paths, 8, tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2 and changed[0][0].float().mean() > 250


@needs_flickr8k
def test_flickr8k_loads_with_its_splits():
    records = load_records(flickr8k_dir())
    assert len(select_split(records, "train")) == 6000 and len(select_split(records, "val")) == 1000
    assert all(len(r.captions) == 5 for r in records[:100])
    split = decode_split(select_split(records, "val")[:8], "val", 32, progress=False)
    assert split.pixels.shape == (8, 3, 32, 32) and len(split.pairs.captions) == 40
