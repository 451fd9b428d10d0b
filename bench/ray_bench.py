"""Distributed encoding benchmark: `imgsearch index` on a local Ray cluster of 1, 2 and 4 nodes
(separate raylets on loopback, one encoder actor per node) against the single-process pipeline,
same gallery, same encoder; also checks that every run gives the single-process vectors. Prints a
table and writes JSON.

    python bench/ray_bench.py                          # 600 Flickr8k photos, the shipped "photos" encoder
    python bench/ray_bench.py --images 200 --nodes 1,2 # a smoke run

On one 2-core machine more nodes cannot encode faster than the cores allow: the figures show what
Ray's scheduling and transfer cost on top of the encoder, and that results do not change with the
cluster's shape. On a real cluster each node brings its own cores or GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer.build import BuildOptions, build_index  # noqa: E402
from indexer.db import session_factory  # noqa: E402
from indexer.faiss_store import FaissFileStore  # noqa: E402

RAY = str(Path(sys.executable).parent / "ray")


def gallery_of(images: int, workdir: Path) -> Path:
    """A folder gallery of the first `images` Flickr8k photos (links, not copies)."""
    source = ROOT.parent / "shared" / "data" / "flickr8k" / "images"
    if not source.is_dir():
        sys.exit(f"{source} is missing: this bench encodes real photos from ../shared/data/flickr8k")
    folder = workdir / "gallery"
    folder.mkdir()
    for path in sorted(source.iterdir())[:images]:
        (folder / path.name).symlink_to(path)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_cluster(nodes: int, cpus_per_node: int) -> str:
    """A head and nodes-1 more raylets on this machine; returns the address to join."""
    port = free_port()
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                   check=True, capture_output=True)
    for _ in range(nodes - 1):
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common], check=True, capture_output=True)
    return f"127.0.0.1:{port}"


def stop_cluster() -> None:
    import ray

    ray.shutdown()
    subprocess.run([RAY, "stop", "--force"], capture_output=True)


def run(gallery: Path, encoder: str, workdir: Path, label: str, options: BuildOptions) -> tuple[dict, dict]:
    sessions = session_factory(f"sqlite:///{workdir / label}.db")
    started = time.perf_counter()
    report = build_index(gallery=str(gallery), encoder_spec=encoder, name="bench", index_dir=workdir / label,
                         sessions=sessions, options=options)
    wall = time.perf_counter() - started
    store = FaissFileStore(workdir / label)
    arrays = store.read_arrays(store.current("bench"))
    from sqlalchemy import select

    from indexer.catalogue import ImageRow

    with sessions() as session:
        paths = dict(session.execute(select(ImageRow.id, ImageRow.path)).all())
    vectors = {paths[int(i)]: v for i, v in zip(arrays["image_ids"], arrays["image_vectors"], strict=True)}
    row = {"run": label, "images": report.encoded_images, "encode_images_per_s": round(report.images_per_second, 1),
           "build_wall_s": round(wall, 1)}
    return row, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--encoder", default="photos")
    parser.add_argument("--nodes", default="1,2,4")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ray_bench.json")
    args = parser.parse_args()
    # Ray (2.59+) authenticates every connection with a token, read when ray is imported: one is
    # made for the run and shared through the environment with the raylets and this driver.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    import ray

    results: dict = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                     "ray": ray.__version__, "encoder": args.encoder, "rows": []}
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as temporary:
        workdir = Path(temporary)
        gallery = gallery_of(args.images, workdir)
        base = BuildOptions(progress=False, batch_size=args.batch_size)
        row, reference = run(gallery, args.encoder, workdir, "single-process", base)
        row["max_abs_diff"] = 0.0
        results["rows"].append(row)
        print(f"{'run':<16}{'images':>8}{'encode img/s':>14}{'build s':>9}{'max |diff|':>12}")
        print(f"{row['run']:<16}{row['images']:>8}{row['encode_images_per_s']:>14.1f}{row['build_wall_s']:>9.1f}"
              f"{0.0:>12.1e}", flush=True)
        for nodes in [int(n) for n in args.nodes.split(",")]:
            address = start_cluster(nodes, cpus_per_node=max(1, (os.cpu_count() or 2) // nodes))
            try:
                options = BuildOptions(progress=False, batch_size=args.batch_size, ray_address=address)
                row, vectors = run(gallery, args.encoder, workdir, f"ray {nodes} node(s)", options)
            finally:
                stop_cluster()
            assert sorted(vectors) == sorted(reference), "the Ray run encoded a different set of images"
            row["max_abs_diff"] = max(float(np.abs(vectors[p] - reference[p]).max()) for p in reference)
            row["nodes"] = nodes
            results["rows"].append(row)
            print(f"{row['run']:<16}{row['images']:>8}{row['encode_images_per_s']:>14.1f}"
                  f"{row['build_wall_s']:>9.1f}{row['max_abs_diff']:>12.1e}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
