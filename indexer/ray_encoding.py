"""Distributed image encoding on a Ray cluster, with Ray Data:

    read (file paths) -> decode (tasks, on every CPU of the cluster) -> encode (one actor per
    device: per GPU, or per node without GPUs) -> vectors (streamed back to the build, by position)

Decoding and encoding are the same functions as the single-process pipeline (`pipeline.py`), so
the vectors are the same; a bad file is skipped and reported there as here. The encoder is loaded
by each actor from its checkpoint path, which must be readable on every node (a shared file
system); its hash is checked against the build's, so no node encodes with another model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexer.pipeline import EncodedImages
from models.data import SkipReport
from models.data.images import BadImageError, load_for_encoding

log = logging.getLogger(__name__)


def connect(address: str) -> None:
    """Join the cluster at `address` ("auto": the one this machine runs, else a local one). A
    cluster with token authentication (Ray's default from 2.59) needs RAY_AUTH_TOKEN set here as on
    its nodes; a failure is a ConnectionError, which the CLI shows as one line."""
    import ray

    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address != "auto":
        ray.init(address=address, **quiet)
        return
    try:
        ray.init(address="auto", **quiet)
    except ConnectionError:
        log.info("no Ray cluster is running here: starting a local one")
        ray.init(include_dashboard=False, **quiet)


def encode_image_files_on_ray(encoder_spec: str, checkpoint_hash: str, paths: Sequence[Path], *, address: str,
                              image_size: int, embed_dim: int, batch_size: int = 64, actors: int | None = None,
                              device: str = "cpu", runtime: str = "openvino", progress: bool = True
                              ) -> EncodedImages:
    """Encode image files on the Ray cluster at `address`; `actors` encoders (default: one per
    GPU of the cluster, or one per node without GPUs)."""
    import ray

    started = time.perf_counter()
    connect(address)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device.startswith("cuda") else 0
    if gpus and actors and actors > gpus:  # each actor holds a GPU: the surplus would wait forever
        raise ValueError(f"{actors} encoder actors asked for, but the Ray cluster has {gpus} GPU(s)")
    actors = actors or gpus or max(1, len([n for n in ray.nodes() if n.get("Alive")]))
    threads = max(1, int(resources.get("CPU", 1)) // actors)
    items = [{"position": i, "path": str(path)} for i, path in enumerate(paths)]
    # Actors and decode tasks each reserve half a CPU, so that a node's encoder never leaves its
    # decoders unscheduled (Ray Data would then wait forever); the encoder still uses every core
    # of its share, through its own threads.
    dataset = (ray.data.from_items(items)
               .map_batches(_decode_batch, fn_kwargs={"size": image_size}, batch_size=batch_size,
                            batch_format="numpy", num_cpus=0.5)
               .map_batches(_EncodeActor, fn_constructor_kwargs={
                   "spec": encoder_spec, "checkpoint_hash": checkpoint_hash, "device": device if gpus else "cpu",
                   "runtime": runtime, "threads": threads},
                            batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpus else 0,
                            num_cpus=0.5))
    return _collect(dataset, paths, embed_dim, started)


def _collect(dataset, paths: Sequence[Path], embed_dim: int, started: float) -> EncodedImages:
    vectors = np.zeros((len(paths), embed_dim), np.float32)
    sizes: dict[int, tuple[int, int]] = {}
    report = SkipReport()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for position, error, vector, width, height in zip(batch["position"], batch["error"], batch["vector"],
                                                          batch["width"], batch["height"], strict=True):
            if error:
                report.add(paths[int(position)], str(error))
            else:
                vectors[int(position)] = vector
                sizes[int(position)] = (int(width), int(height))
    kept = sorted(sizes)  # in input order, as the single-process pipeline returns them
    return EncodedImages(vectors[kept], kept, [sizes[i] for i in kept], report, time.perf_counter() - started)


def _decode_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Files -> 3 x size x size uint8 pixels (zeros and an error message for a file that is bad)."""
    pixels = np.zeros((len(batch["path"]), 3, size, size), np.uint8)
    errors, widths, heights = [], [], []
    for row, path in enumerate(batch["path"]):
        try:
            pixels[row], (width, height) = load_for_encoding(str(path), size)
            errors.append("")
        except BadImageError as error:
            width = height = 0
            errors.append(str(error))
        widths.append(width)
        heights.append(height)
    return {"position": batch["position"], "pixels": pixels, "error": np.asarray(errors, dtype=object),
            "width": np.asarray(widths), "height": np.asarray(heights)}


class _EncodeActor:
    """One encoder on one device, loaded once, fed decoded batches."""

    def __init__(self, spec: str, checkpoint_hash: str, device: str, runtime: str, threads: int):
        import torch

        from models.encoders import resolve_encoder

        torch.set_num_threads(threads)
        self.encoder, _, found_hash = resolve_encoder(spec, device, runtime)
        if found_hash != checkpoint_hash:
            raise ValueError(f"{spec} on this node is not the checkpoint the build uses (hash "
                             f"{found_hash[:12]} != {checkpoint_hash[:12]}): share one file system")
        self.encoder.eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        good = np.flatnonzero(batch["error"] == "")
        vectors = np.zeros((len(batch["position"]), self.encoder.embed_dim), np.float32)
        if len(good):
            encoded = self.encoder.encode_image(torch.from_numpy(np.ascontiguousarray(batch["pixels"][good])))
            vectors[good] = encoded.cpu().numpy()
        return {"position": batch["position"], "error": batch["error"], "vector": vectors,
                "width": batch["width"], "height": batch["height"]}
