"""REST API latency and throughput over loopback: text -> image and image -> text on large indexes.

    python bench/api_bench.py --checkpoint runs/flickr8k_vse_gru_512/model_best.pt --sizes 100000,1000000
    python bench/api_bench.py --checkpoint ... --sizes 20000 --clients 1,4 --requests 200   # a smoke run

For each size it builds (once; reused while the checkpoint is unchanged) a catalogue of N images
with one caption each and an index of N structured synthetic image vectors and N caption vectors
(each its image's vector plus noise), published with the product's own `publish_vectors`; the
text encoder is the real checkpoint. It then starts `imgsearch serve` in a subprocess and drives
it from this process with C concurrent keep-alive HTTP/1.1 connections (a small asyncio client:
a heavier one would take CPU from the server on this 2-core machine), each run bounded by
`--requests` and `--seconds`. Queries: 50 search-box queries of 1-4 words and Flickr8k val
captions (about 11 words) for text -> image, random gallery image ids for image -> text and,
with the Flickr8k photos present, uploaded JPEGs (image -> text through the image CNN). Latency
is measured at the client; the encode / search / metadata split comes from the server's own
`timings_ms`, and "http" is the rest (parsing, routing, JSON, queueing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from index_bench import structured_vectors  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from app.settings import Settings  # noqa: E402
from indexer.build import BuildOptions, publish_vectors  # noqa: E402
from indexer.catalogue import CaptionRow, ImageRow  # noqa: E402
from indexer.db import session_factory  # noqa: E402
from indexer.faiss_store import FaissFileStore  # noqa: E402
from indexer.gallery import file_sha256  # noqa: E402
from models.data import load_records  # noqa: E402

FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k"
INDEX_NAME = "bench"
FALLBACK_QUERIES = ["a dog runs across the grass", "two children play in the water", "a man rides a bike",
                    "a woman in a red dress walks down the street", "a group of people stand in the snow"]
# What people type into a search box: 1-4 words, unlike the 11-word Flickr8k captions.
SHORT_QUERIES = ["dog", "black dog", "dog on the beach", "two dogs playing", "dog catching a ball", "puppy",
                 "child", "girl in pink", "boy jumping", "children in a pool", "baby", "kids playing soccer",
                 "man on a bike", "mountain biker", "skateboarder", "snowboarder jumping", "skier", "surfer",
                 "climber on a rock", "man in a red shirt", "woman with an umbrella", "crowd", "people on a street",
                 "wedding", "football game", "basketball player", "runner", "swimmer", "horse", "cat", "bird",
                 "water", "snow", "beach at sunset", "city street", "grass field", "forest trail", "mountains",
                 "boat on a lake", "car", "motorcycle", "fountain", "playground", "tent", "red jacket",
                 "blue water", "old man", "musician with a guitar", "dancers", "fireworks"]


# --- the gallery: catalogue rows and published vectors ------------------------------------------
def prepare(size: int, checkpoint: Path, dim: int, work: Path) -> tuple[str, Path]:
    """A catalogue and a published index of `size` images (reused when already built)."""
    work.mkdir(parents=True, exist_ok=True)
    database_url, index_dir = f"sqlite:///{work / 'catalogue.db'}", work / "indexes"
    marker, wanted = work / "ready.json", {"size": size, "checkpoint": file_sha256(checkpoint), "dim": dim}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        print(f"reusing the {size:,}-image gallery in {work}")
        return database_url, index_dir
    for stale in (work / "catalogue.db", marker):
        stale.unlink(missing_ok=True)
    sessions = session_factory(database_url)
    started = time.perf_counter()
    image_ids, caption_ids = _catalogue(sessions, size, _caption_texts())
    images = structured_vectors(size, dim, clusters=4000, intrinsic=12, seed=0)
    rng = np.random.default_rng(1)
    captions = images + rng.normal(scale=0.02, size=images.shape).astype(np.float32)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    print(f"catalogue and vectors: {time.perf_counter() - started:.0f} s; building the indexes ...")
    arrays = {"image_ids": image_ids, "image_vectors": images, "caption_ids": caption_ids,
              "caption_image_ids": image_ids, "caption_vectors": captions}
    publish_vectors(name=INDEX_NAME, index_dir=index_dir, sessions=sessions, gallery="/bench",
                    encoder_spec=str(checkpoint), arrays=arrays, options=BuildOptions(keep_versions=1))
    manifest = FaissFileStore(index_dir).current(INDEX_NAME).manifest
    print(f"built in {time.perf_counter() - started:.0f} s: images {manifest['image_index']['factory']} "
          f"(recall {manifest['image_index']['recall']}), captions {manifest['caption_index']['factory']}")
    marker.write_text(json.dumps(wanted))
    return database_url, index_dir


def _caption_texts() -> list[str]:
    if FLICKR8K.exists():
        return [c for r in load_records(FLICKR8K) if r.split == "train" for c in r.captions]
    return FALLBACK_QUERIES


def _catalogue(sessions, size: int, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`size` image rows with one caption each, inserted in bulk; their ids in order."""
    with sessions() as session, session.begin():
        for start in range(0, size, 50_000):
            chunk = range(start, min(size, start + 50_000))
            session.execute(insert(ImageRow), [
                {"id": i + 1, "gallery": "/bench", "path": f"{i:07d}.jpg", "file_path": f"/bench/{i:07d}.jpg",
                 "content_hash": f"{i:064x}", "file_size": 1, "file_mtime_ns": 0, "width": 224, "height": 224}
                for i in chunk])
            session.execute(insert(CaptionRow), [
                {"id": i + 1, "image_id": i + 1, "position": 0, "text": texts[i % len(texts)], "source": "human"}
                for i in chunk])
    ids = np.arange(1, size + 1, dtype=np.int64)
    return ids, ids.copy()


# --- the server ---------------------------------------------------------------------------------
def start_server(database_url: str, index_dir: Path, port: int, workers: int) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=database_url, INDEX_DIR=str(index_dir), DEFAULT_INDEX=INDEX_NAME)
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers),
               "--no-access-log"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    stop_server(server)
    raise SystemExit("the server did not answer /api/health within 10 minutes")


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


# --- the load generator -------------------------------------------------------------------------
@dataclass
class Request:
    raw: bytes  # a complete HTTP/1.1 request


@dataclass
class Outcome:
    latencies_ms: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def get_request(path: str, params: dict) -> Request:
    target = f"{path}?{urllib.parse.urlencode(params)}"
    return Request(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())


def upload_request(path: str, image: bytes, fields: dict) -> Request:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return Request(head + body)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request) -> tuple[int, bytes]:
    writer.write(request.raw)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    lengths = [int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")]
    if not lengths:
        raise ValueError(f"no Content-Length in the reply: {lines[0]}")
    return status, await reader.readexactly(lengths[0])


async def _client(port: int, requests: list[Request], next_index, deadline: float, outcome: Outcome,
                  record: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (i := next_index()) is not None and time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                status, body = await _exchange(reader, writer, requests[i % len(requests)])
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                outcome.errors.append(f"{type(error).__name__}: {error}")
                writer.close()
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError as refused:  # the server is gone: this client stops, its errors counted
                    outcome.errors.append(f"reconnect failed: {refused}")
                    return
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if not record:
                continue
            if status != 200:
                outcome.errors.append(f"HTTP {status}: {body[:200]!r}")
                continue
            outcome.latencies_ms.append(elapsed)
            outcome.stages.append(json.loads(body)["timings_ms"])
    finally:
        writer.close()


async def drive(port: int, requests: list[Request], clients: int, count: int, seconds: float,
                record: bool = True) -> tuple[Outcome, float]:
    """`clients` connections send requests until `count` are done or `seconds` have passed."""
    issued = iter(range(count))
    outcome, started = Outcome(), time.perf_counter()
    await asyncio.gather(*(_client(port, requests, lambda: next(issued, None), started + seconds, outcome, record)
                           for _ in range(clients)))
    return outcome, time.perf_counter() - started


def summarise(mode: str, clients: int, runs: list[tuple[Outcome, float]]) -> dict:
    """Latency percentiles over all repeats pooled; throughput per repeat (median and range)."""
    latencies = sorted(ms for outcome, _ in runs for ms in outcome.latencies_ms)
    errors = [e for outcome, _ in runs for e in outcome.errors]
    if not latencies:
        return {"mode": mode, "clients": clients, "ok": 0, "errors": len(errors),
                "first_error": errors[0] if errors else ""}
    quantile = lambda q: latencies[max(0, math.ceil(q * len(latencies)) - 1)]  # noqa: E731  (nearest rank)
    stages = [s for outcome, _ in runs for s in outcome.stages]
    stage = {name: statistics.fmean(s.get(name, 0.0) for s in stages) for name in ("encode", "search", "metadata")}
    rates = sorted(len(outcome.latencies_ms) / wall for outcome, wall in runs)
    return {"mode": mode, "clients": clients, "repeats": len(runs), "ok": len(latencies), "errors": len(errors),
            "first_error": errors[0] if errors else "",
            "p50_ms": round(quantile(0.50), 2), "p95_ms": round(quantile(0.95), 2), "p99_ms": round(quantile(0.99), 2),
            "qps": round(statistics.median(rates), 1), "qps_min": round(rates[0], 1), "qps_max": round(rates[-1], 1),
            "mean_ms": round(statistics.fmean(latencies), 2),
            **{f"{name}_ms": round(value, 3) for name, value in stage.items()},
            "http_ms": round(statistics.fmean(latencies) - sum(stage.values()), 3)}


# --- the queries --------------------------------------------------------------------------------
def query_sets(size: int, uploads: int, seed: int = 0) -> dict[str, list[Request]]:
    rng = random.Random(seed)
    if FLICKR8K.exists():
        val = [r for r in load_records(FLICKR8K) if r.split == "val"]
        texts = [c for r in val for c in r.captions]
    else:
        val, texts = [], FALLBACK_QUERIES
    rng.shuffle(texts)
    sets = {"text->image (1-4 words)": [get_request("/api/search/text", {"q": t, "k": 10}) for t in SHORT_QUERIES],
            "text->image (captions)": [get_request("/api/search/text", {"q": t, "k": 10}) for t in texts[:2000]],
            "image id->captions": [get_request("/api/search/image", {"image_id": rng.randint(1, size), "k": 10})
                                   for _ in range(2000)]}
    if val and uploads:
        photos = [Path(r.path).read_bytes() for r in rng.sample(val, min(uploads, len(val)))]
        sets["image upload->captions"] = [upload_request("/api/search/image", photo, {"k": 10}) for photo in photos]
    return sets


def _rate(row: dict) -> str:
    if "qps" not in row:
        return ""
    spread = f" ({row['qps_min']:.0f}-{row['qps_max']:.0f})" if row.get("repeats", 1) > 1 else ""
    return f"{row['qps']:.0f}{spread}"


def table(rows: list[dict]) -> str:
    header = ("| index | mode | clients | ok | errors | p50 ms | p95 ms | p99 ms | q/s (range) | encode | search "
              "| metadata | http |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['size']:,} | {r['mode']} | {r['clients']} | {r['ok']} | {r['errors']} | {r.get('p50_ms', '')} | "
             f"{r.get('p95_ms', '')} | {r.get('p99_ms', '')} | {_rate(r)} | {r.get('encode_ms', '')} | "
             f"{r.get('search_ms', '')} | {r.get('metadata_ms', '')} | {r.get('http_ms', '')} |" for r in rows]
    return "\n".join([header, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the encoder (its text tower is measured)")
    parser.add_argument("--sizes", default="100000,1000000", help="gallery sizes (images)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent connections to try")
    parser.add_argument("--requests", type=int, default=3000, help="requests per run, at most")
    parser.add_argument("--seconds", type=float, default=20, help="seconds per run, at most")
    parser.add_argument("--uploads", type=int, default=200, help="distinct upload queries (0: none)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per concurrent setting (fresh connections)")
    parser.add_argument("--modes", help="comma-separated subset of the query modes (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/imgsearch-api-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api_bench.json")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint}: checkpoint not found (train one: imgsearch train --config "
                         "configs/flickr8k_vse_gru_512.toml)")
    from models import load_encoder

    dim = load_encoder(args.checkpoint).embed_dim
    rows: list[dict] = []
    for size in (int(s) for s in args.sizes.split(",")):
        database_url, index_dir = prepare(size, args.checkpoint, dim, args.work_dir / f"n{size}")
        manifest = FaissFileStore(index_dir).current(INDEX_NAME).manifest
        server = start_server(database_url, index_dir, args.port, args.workers)
        try:
            for mode, requests in query_sets(size, args.uploads).items():
                if args.modes and mode not in args.modes.split(","):
                    continue
                asyncio.run(drive(args.port, requests, 4, 100, 60, record=False))  # warm every worker
                for clients in (int(c) for c in args.clients.split(",")):
                    count = args.requests if "upload" not in mode else min(args.requests, 500)
                    # Several clients: each repeat opens new connections, and how they happen to spread
                    # over the worker processes moves throughput from run to run, so it is repeated.
                    repeats = args.repeats if clients > 1 else 1
                    runs = [asyncio.run(drive(args.port, requests, clients, count, args.seconds))
                            for _ in range(repeats)]
                    row = {"size": size, **summarise(mode, clients, runs),
                           "image_index": manifest["image_index"]["factory"],
                           "caption_index": manifest["caption_index"]["factory"]}
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
        finally:
            stop_server(server)
    print(table(rows))
    report = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "checkpoint": str(args.checkpoint), "embed_dim": dim, "workers": args.workers,
              "search_threads": os.environ.get("SEARCH_THREADS", f"{Settings.model_fields['search_threads'].default} "
                                                                  "(default)"),
              "requests_per_run": args.requests, "seconds_per_run": args.seconds, "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
