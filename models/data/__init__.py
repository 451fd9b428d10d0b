"""Datasets: Karpathy JSON, plain image folders, synthetic scenes, and the one image loader."""

from models.data.features import BackboneFeatures
from models.data.images import BadImageError, SkipReport, open_image
from models.data.loading import DecodedSplit, decode_split, load_records
from models.data.records import CaptionPairs, DatasetError, ImageRecord, select_split
from models.data.synthetic import generate_scenes

__all__ = ["BackboneFeatures", "BadImageError", "CaptionPairs", "DatasetError", "DecodedSplit", "ImageRecord",
           "SkipReport", "decode_split", "generate_scenes", "load_records", "open_image", "select_split"]
