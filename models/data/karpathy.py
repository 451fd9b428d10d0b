"""Karpathy-format caption datasets (Flickr8k, Flickr30k, COCO).

The JSON holds `images[]`, each with a `filename`, a `split` and `sentences[].raw`; COCO adds a
`filepath` sub-folder. Karpathy's `restval` split is training data.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.data.records import SPLITS, DatasetError, ImageRecord

# Names the JSON usually has, tried in order when a dataset folder is given.
JSON_NAMES = ("dataset.json", "captions.json", "dataset_flickr8k.json", "dataset_flickr30k.json",
              "dataset_coco.json")
IMAGE_DIR_NAMES = ("images", "Images", "Flicker8k_Dataset", "flickr30k-images")


def find_karpathy_json(folder: Path) -> Path | None:
    """The Karpathy JSON inside a dataset folder, or None when there is none."""
    for name in JSON_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_karpathy(json_path: str | Path, image_root: str | Path | None = None) -> list[ImageRecord]:
    """Read a Karpathy JSON into records; images are looked up under `image_root`.

    Without `image_root`, the first of `images/`, `Images/`, ... beside the JSON that exists is used.
    Missing image files are not checked here: the image loader skips and reports them.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: Karpathy JSON file not found")
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{json_path}: not valid JSON ({error})") from error
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DatasetError(f"{json_path}: expected an object with an 'images' list (Karpathy format)")
    root = Path(image_root) if image_root else _guess_image_root(json_path.parent)
    return [_parse_entry(entry, index, root, json_path) for index, entry in enumerate(document["images"])]


def _guess_image_root(folder: Path) -> Path:
    for name in IMAGE_DIR_NAMES:
        if (folder / name).is_dir():
            return folder / name
    return folder  # images beside the JSON


def _parse_entry(entry: object, index: int, root: Path, json_path: Path) -> ImageRecord:
    where = f"{json_path}: images[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
        raise DatasetError(f"{where} has no 'filename' string")
    sentences = entry.get("sentences", [])
    if not isinstance(sentences, list) or not all(isinstance(s, dict) and "raw" in s for s in sentences):
        raise DatasetError(f"{where} ('{entry['filename']}'): 'sentences' must be a list of {{'raw': ...}}")
    split = entry.get("split", "train")
    split = "train" if split == "restval" else split
    if split not in SPLITS:
        raise DatasetError(f"{where} ('{entry['filename']}'): unknown split {split!r}")
    relative = Path(entry.get("filepath", "")) / entry["filename"]
    image_id = relative.as_posix()  # stable and readable; imgid numbering differs between releases
    captions = tuple(str(s["raw"]).strip() for s in sentences if str(s["raw"]).strip())
    attributes = entry.get("scene", {}) if isinstance(entry.get("scene"), dict) else {}
    return ImageRecord(image_id, root / relative, captions, split, attributes)


def write_karpathy(records: list[ImageRecord], json_path: Path, dataset_name: str) -> None:
    """Write records as a Karpathy JSON (used by the synthetic generator); paths relative to images/."""
    images = []
    sentence_id = 0
    for index, record in enumerate(records):
        sentences = []
        for caption in record.captions:
            sentences.append({"raw": caption, "imgid": index, "sentid": sentence_id})
            sentence_id += 1
        entry = {"filename": record.path.name, "imgid": index, "split": record.split,
                 "sentids": [s["sentid"] for s in sentences], "sentences": sentences}
        if record.attributes:
            entry["scene"] = record.attributes
        images.append(entry)
    json_path.write_text(json.dumps({"dataset": dataset_name, "images": images}, indent=1))
