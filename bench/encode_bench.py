"""Image encoding speed of the pretrained tower: the cost of indexing and of every uploaded query.

Rows: the reference EfficientNet-Lite implementation, timm's network in eager PyTorch (NCHW and
channels-last, the product's eager path) and compiled by OpenVINO (fp32, bf16). For each:
images/s on decoded batches (the backbone alone for the two reference rows, the encoder's whole
image side for the product's); for the product's runtimes also decode + encode images/s
through the indexer's pipeline (`encode_image_files`: JPEG files -> vectors, decoding in the main
process and in 2 worker processes) and the latency of
one uploaded JPEG -> embedding (p50/p95); the largest difference from the eager embeddings; and,
with a trained checkpoint, Flickr8k val rsum on each runtime.

    python bench/encode_bench.py --data ../shared/data/flickr8k --checkpoint models/pretrained/photos.pt
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer.pipeline import encode_image_files  # noqa: E402
from models.data import decode_split, load_records, select_split  # noqa: E402
from models.encoders import create_encoder, load_encoder  # noqa: E402
from models.encoders.efficientnet_lite import EFFICIENTNET_LITES, create_timm_lite, resolve_weights  # noqa: E402
from models.evaluation import evaluate_encoder  # noqa: E402
from models.vocab import Vocabulary  # noqa: E402


def rate(function, batch, repeats: int) -> float:
    function(batch)
    started = time.perf_counter()
    for _ in range(repeats):
        function(batch)
    return repeats * len(batch) / (time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def upload_latency_ms(encoder, jpegs: list[bytes], repeats: int) -> tuple[float, float]:
    """One uploaded JPEG at a time: decode the bytes, resize, encode (what /api/search/image does first)."""
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        encoder.encode_image([Image.open(io.BytesIO(jpegs[i % len(jpegs)])).convert("RGB")])
        times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 50), percentile(times, 95)


def encoder_for(args) -> torch.nn.Module:
    if args.checkpoint:
        return load_encoder(args.checkpoint).eval()
    config = {"family": "vse", "embed_dim": 1024, "image_size": EFFICIENTNET_LITES[args.backbone].native_size,
              "image": {"backbone": args.backbone, "pretrained": "imagenet", "freeze": True},
              "text": {"kind": "gru"}, "loss": {}}
    return create_encoder("bench", vocab=Vocabulary.build(["a"]), config=config).eval()


def reference_rows(tower, normalized: torch.Tensor, args) -> list[dict]:
    """Backbones outside the product: timm's network in NCHW and the reference implementation."""
    outside = {"timm eager, NCHW": create_timm_lite(tower.backbone_name).eval()}
    try:
        from efficientnet_lite_pytorch import EfficientNet

        path = resolve_weights(tower.backbone_name, "imagenet")
        reference = EfficientNet.from_pretrained(tower.backbone_name.replace("_", "-"), weights_path=str(path))
        reference._fc = torch.nn.Identity()
        outside["reference implementation, eager"] = reference.eval()
    except ImportError:
        print("(efficientnet-lite-pytorch not installed: no reference row)")
    rows = []
    for label, network in outside.items():
        with torch.inference_mode():
            rows.append({"runtime": label, "backbone_images_per_second": rate(network, normalized.contiguous(),
                                                                                args.repeats)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "flickr8k"))
    parser.add_argument("--checkpoint", help="a trained encoder (its val rsum is measured on each runtime)")
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=list(EFFICIENTNET_LITES))
    parser.add_argument("--images", type=int, default=512, help="JPEG files for the pipeline rows")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "encode_bench.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    encoder = encoder_for(args)
    size = encoder.image_size
    records = select_split(load_records(args.data), "val")
    paths = [r.path for r in records][: args.images]
    jpegs = [Path(p).read_bytes() for p in paths[:64]]
    val = decode_split(records, "val", size, Path(".cache/imgsearch"), progress=False)
    pixels = val.pixels[: args.batch_size]
    rows = []
    tower = getattr(encoder, "image_tower", None)  # an ensemble has several: no reference rows then
    if tower is not None:
        rows += reference_rows(tower, tower.normalize(pixels), args)

    encoder.use_backbone_runtime("torch")
    with torch.inference_mode():
        eager = encoder.encode_image(pixels)
    for runtime in ("torch", "openvino", "openvino-bf16"):
        encoder.use_backbone_runtime(runtime)
        with torch.inference_mode():
            speed = rate(encoder.encode_image, pixels, args.repeats)
            difference = float((encoder.encode_image(pixels) - eager).abs().max())
        pipeline = {workers: encode_image_files(encoder, paths, batch_size=args.batch_size, workers=workers,
                                                progress=False).images_per_second for workers in (0, 2)}
        p50, p95 = upload_latency_ms(encoder, jpegs, 60)
        row = {"runtime": "torch eager, channels-last" if runtime == "torch" else runtime,
               "backbone_images_per_second": speed, "decode_encode_images_per_second": pipeline,
               "upload_p50_ms": p50, "upload_p95_ms": p95, "max_feature_difference": difference}
        if args.checkpoint:
            row["val_rsum"] = evaluate_encoder(encoder, val).rsum
        rows.append(row)
    encoder.use_backbone_runtime("torch")

    header = f"{'runtime':<34}{'encode img/s':>15}{'decode+encode 0/2 w':>21}{'upload p50/p95 ms':>19}"
    header += f"{'max |diff|':>12}" + (f"{'val rsum':>10}" if args.checkpoint else "")
    print(f"{encoder.name} at {size} px, batch {args.batch_size}, {args.threads} threads")
    print(header)
    for row in rows:
        line = f"{row['runtime']:<34}{row['backbone_images_per_second']:>15.1f}"
        pipeline = row.get("decode_encode_images_per_second")
        line += f"{pipeline[0]:>13.1f} / {pipeline[2]:<5.1f}" if pipeline else f"{'-':>21}"
        line += (f"{row['upload_p50_ms']:>10.1f} / {row['upload_p95_ms']:<6.1f}" if "upload_p50_ms" in row
                 else f"{'-':>19}")
        line += f"{row['max_feature_difference']:>12.1e}" if "max_feature_difference" in row else f"{'-':>12}"
        if args.checkpoint:
            line += f"{row['val_rsum']:>10.1f}" if "val_rsum" in row else f"{'-':>10}"
        print(line)
    Path(args.out).write_text(json.dumps({
        "encoder": encoder.name, "image_size": size, "batch_size": args.batch_size, "threads": args.threads,
        "pipeline_images": len(paths), "checkpoint": args.checkpoint, "machine": platform.machine(),
        "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
