"""Train and evaluate encoders on a dataset; print one Recall@K table and write it as JSON.

    python bench/train_bench.py --suite flickr8k            # VSE0 / VSE++ (GRU, MiniLM), Dual-Path, GXN + ablations
    python bench/train_bench.py --suite flickr8k_pretrained # every family on the frozen ImageNet EfficientNet-Lite0
    python bench/train_bench.py --suite synthetic           # VSE / VSE++ / Dual-Path / GXN on the synthetic scenes
    python bench/train_bench.py --suite flickr8k_dan        # m-DAN, K = 0/1/2, beside VSE++ (same tower)
    python bench/train_bench.py --suite flickr8k --reuse    # re-read finished runs, train nothing

Each run is a separate `imgsearch train` process, so its wall time and peak memory are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k"

SUITES = {
    "flickr8k": [
        ("VSE0, GRU", "configs/flickr8k_vse_gru.toml"),
        ("VSE++, GRU", "configs/flickr8k_vsepp_gru.toml"),
        ("VSE++, GRU, from VSE0", "configs/flickr8k_vsepp_gru_from_vse.toml"),
        ("VSE0, MiniLM (frozen)", "configs/flickr8k_vse_minilm.toml"),
        ("VSE++, MiniLM (frozen)", "configs/flickr8k_vsepp_minilm.toml"),
        ("Dual-Path", "configs/flickr8k_dual_path.toml"),
        ("Dual-Path, no instance loss", "configs/flickr8k_dual_path_no_instance.toml"),
        ("Dual-Path, no Stage I", "configs/flickr8k_dual_path_no_stage1.toml"),
        ("Dual-Path, sum of hinges", "configs/flickr8k_dual_path_sum_hinge.toml"),
        ("GXN", "configs/flickr8k_gxn.toml"),
        ("GXN, no generative terms", "configs/flickr8k_gxn_no_generation.toml"),
        ("GXN, sum of hinges", "configs/flickr8k_gxn_sum_hinge.toml"),
        ("GXN, sum of hinges, no generative terms", "configs/flickr8k_gxn_sum_hinge_no_generation.toml"),
    ],
    # The ImageNet EfficientNet-Lite0 tower, frozen, its features cached (6 views per training image).
    "flickr8k_pretrained": [
        ("VSE0, MiniLM", "configs/flickr8k_vse_lite0_minilm.toml"),
        ("VSE++, MiniLM", "configs/flickr8k_vsepp_lite0_minilm.toml"),
        ("VSE, InfoNCE, MiniLM", "configs/flickr8k_vse_infonce_lite0_minilm.toml"),
        ("VSE, InfoNCE, MiniLM, Lite2", "configs/flickr8k_vse_infonce_lite2_minilm.toml"),
        ("VSE++, MiniLM, Lite2", "configs/flickr8k_vsepp_lite2_minilm.toml"),
        ("VSE0, GRU", "configs/flickr8k_vse_lite0_gru.toml"),
        ("VSE++, GRU", "configs/flickr8k_vsepp_lite0_gru.toml"),
        ("Dual-Path, MiniLM", "configs/flickr8k_dual_path_lite0_minilm.toml"),
        ("Dual-Path, MiniLM, no instance loss", "configs/flickr8k_dual_path_lite0_minilm_no_instance.toml"),
        ("GXN, MiniLM", "configs/flickr8k_gxn_lite0_minilm.toml"),
        ("GXN, MiniLM, no generative terms", "configs/flickr8k_gxn_lite0_minilm_no_generation.toml"),
        ("Dual-Path, TextCNN", "configs/flickr8k_dual_path_lite0.toml"),
        ("Dual-Path, TextCNN, no instance loss", "configs/flickr8k_dual_path_lite0_no_instance.toml"),
        ("GXN, GRU", "configs/flickr8k_gxn_lite0.toml"),
        ("GXN, GRU, no generative terms", "configs/flickr8k_gxn_lite0_no_generation.toml"),
    ],
    # m-DAN beside VSE++ on the same frozen Lite0 (2 cached views of its 7 x 7 map) and budget: K = 0, 1, 2.
    "flickr8k_dan": [
        ("VSE++, MiniLM, 2 views", "configs/flickr8k_vsepp_lite0_minilm_2views.toml"),
        ("DAN K=0 (average pooling), MiniLM", "configs/flickr8k_dan_lite0_minilm_k0.toml"),
        ("DAN K=1, MiniLM", "configs/flickr8k_dan_lite0_minilm_k1.toml"),
        ("DAN K=2, MiniLM", "configs/flickr8k_dan_lite0_minilm.toml"),
        ("DAN K=2, GRU", "configs/flickr8k_dan_lite0_gru.toml"),
        ("DAN K=2, MiniLM, region dropout 0.3", "configs/flickr8k_dan_lite0_minilm_dropout.toml"),
    ],
    "synthetic": [
        ("VSE, GRU", "configs/synthetic_vse.toml"),
        ("VSE++, GRU", "configs/synthetic_vsepp.toml"),
        ("Dual-Path", "configs/synthetic_dual_path.toml"),
        ("Dual-Path, no instance loss", "configs/synthetic_dual_path_no_instance.toml"),
        ("Dual-Path, no Stage I", "configs/synthetic_dual_path_no_stage1.toml"),
        ("GXN", "configs/synthetic_gxn.toml"),
        ("GXN, no generative terms", "configs/synthetic_gxn_no_generation.toml"),
    ],
}
METRIC_COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "rsum")


def run_training(config: Path, data: Path, out_dir: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "app.cli", "train", "--config", str(config), "--data", str(data),
               "--out-dir", str(out_dir), *extra]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - started


def evaluate_on(split: str, out_dir: Path, data: Path) -> dict | None:
    """Evaluate the run's best model on a held-out split (the one model selection never saw)."""
    from models.data import load_records, select_split

    if not select_split(load_records(data), split):
        return None
    result = out_dir / f"model_best.{split}.json"
    if not result.is_file():
        subprocess.run([sys.executable, "-m", "app.cli", "evaluate", str(out_dir / "model_best.pt"), "--data",
                        str(data), "--split", split, "--json", str(result)], check=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(result.read_text())["metrics"]


def summarise(label: str, config: Path, out_dir: Path, data: Path) -> dict:
    wall_file = out_dir / "wall_seconds.json"
    wall = json.loads(wall_file.read_text())["wall_seconds"] if wall_file.is_file() else None
    history = json.loads((out_dir / "metrics.json").read_text())["history"]
    best = max(history, key=lambda h: h["val"]["rsum"])
    test = evaluate_on("test", out_dir, data)
    reported = test or best["val"]
    return {"run": label, "config": str(config.relative_to(ROOT)), "out_dir": str(out_dir),
            "reported_split": "test" if test else "val (also used for model selection)",
            "epochs_run": len(history), "best_epoch": best["epoch"], **{k: reported[k] for k in METRIC_COLUMNS},
            "val_rsum": best["val"]["rsum"],
            "train_minutes": sum(h["train_seconds"] for h in history) / 60,
            "wall_minutes": (wall / 60) if wall is not None else None,
            "peak_memory_gb": max(h["peak_memory_mb"] for h in history) / 1024,
            "train_images_per_second": sum(h["images_per_second"] for h in history) / len(history),
            "rsum_per_epoch": [round(h["val"]["rsum"], 1) for h in history]}


def print_table(rows: list[dict]) -> None:
    header = (f"{'run':<30}{'i2t R@1':>8}{'R@5':>6}{'R@10':>6}{'medr':>6}{'t2i R@1':>9}{'R@5':>6}{'R@10':>6}"
              f"{'medr':>6}{'rsum':>7}{'epochs':>7}{'train min':>10}{'wall min':>9}{'peak GB':>8}")
    print(header)
    for r in rows:
        wall = f"{r['wall_minutes']:.1f}" if r["wall_minutes"] is not None else "-"
        print(f"{r['run']:<30}{r['i2t_r1']:>8.1f}{r['i2t_r5']:>6.1f}{r['i2t_r10']:>6.1f}{r['i2t_medr']:>6.0f}"
              f"{r['t2i_r1']:>9.1f}{r['t2i_r5']:>6.1f}{r['t2i_r10']:>6.1f}{r['t2i_medr']:>6.0f}{r['rsum']:>7.1f}"
              f"{r['best_epoch']:>4}/{r['epochs_run']:<2}{r['train_minutes']:>10.1f}{wall:>9}{r['peak_memory_gb']:>8.2f}")


def synthetic_dataset(count: int) -> Path:
    from models.data import generate_scenes

    folder = ROOT / "runs" / f"synthetic_scenes_{count}"
    json_path = folder / "dataset.json"
    return json_path if json_path.is_file() else generate_scenes(folder, count, seed=0, image_size=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="flickr8k")
    parser.add_argument("--data", type=Path, help="dataset (default: ../shared/data/flickr8k or generated scenes)")
    parser.add_argument("--scenes", type=int, default=4000, help="synthetic suite: number of scenes")
    parser.add_argument("--only", help="comma-separated config stems to (re)train, e.g. flickr8k_vse_gru")
    parser.add_argument("--reuse", action="store_true", help="train nothing; summarise finished runs")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/train_SUITE.json)")
    parser.add_argument("extra", nargs="*", help="options passed to every `imgsearch train` (after --)")
    args = parser.parse_args()
    data = args.data or (SHARED_FLICKR8K if args.suite.startswith("flickr8k") else synthetic_dataset(args.scenes))
    if not Path(data).exists():
        sys.exit(f"dataset {data} not found (the Flickr8k suite needs ../shared/data/flickr8k)")
    out = args.out or ROOT / "bench" / "results" / f"train_{args.suite}.json"
    # Runs whose folder is gone (runs/ is not kept between machines) keep their last reported row.
    previous = {r["run"]: r for r in json.loads(out.read_text())["rows"]} if out.is_file() else {}
    rows = []
    for label, config in SUITES[args.suite]:
        out_dir = ROOT / "runs" / Path(config).stem
        selected = args.only is None or Path(config).stem in args.only.split(",")
        if selected and not args.reuse:
            wall = run_training(ROOT / config, Path(data), out_dir, args.extra)
            (out_dir / "wall_seconds.json").write_text(json.dumps({"wall_seconds": wall}))
        if (out_dir / "metrics.json").is_file():
            rows.append(summarise(label, ROOT / config, out_dir, Path(data)))
        elif label in previous:
            rows.append(previous[label])
    if rows:
        print(f"metrics on the {rows[0]['reported_split']} split")
    print_table(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"suite": args.suite, "data": str(data), "machine": platform.processor() or
                               platform.machine(), "cpu_count": os.cpu_count(), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
