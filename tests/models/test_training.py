"""A tiny end-to-end run: train -> checkpoints, metrics JSON/PNG -> resume -> evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from models import load_encoder
from models.data import decode_split, load_records
from models.evaluation import evaluate_encoder
from models.training import BEST_MODEL, LAST_CHECKPOINT, TrainConfig, train
from tests.conftest import ROOT

TINY_MODEL = {"embed_dim": 32, "text": {"word_dim": 16}}


def _config(scenes, out_dir, **changes) -> TrainConfig:
    values = {"data": str(scenes), "model": "vse_tiny_gru", "model_overrides": TINY_MODEL, "out_dir": str(out_dir),
              "epochs": 2, "batch_size": 16, "lr": 1e-3, "image_size": 32, "hflip": False, "cache_dir": None,
              "warmup_steps": 0, "workers": 1}
    return TrainConfig.from_dict({**values, **changes})


def test_train_writes_checkpoints_metrics_and_plot(scenes, tmp_path):
    result = train(_config(scenes, tmp_path / "run"), progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert (tmp_path / "run" / BEST_MODEL).is_file() and (tmp_path / "run" / LAST_CHECKPOINT).is_file()
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 1000
    logged = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert logged["config"]["model"] == "vse_tiny_gru" and len(logged["history"]) == 2
    for entry in logged["history"]:
        assert {"train_loss", "images_per_second", "lr", "train_seconds"} <= set(entry)
        assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_medr", "rsum"} <= set(entry["val"])
    assert result.best_metrics.rsum == max(h["val"]["rsum"] for h in result.history)
    # The best checkpoint evaluates to exactly what training logged for its epoch.
    encoder = load_encoder(result.best_checkpoint)
    val = decode_split(load_records(scenes), "val", 32, progress=False)
    assert evaluate_encoder(encoder, val).rsum == pytest.approx(result.best_metrics.rsum)


def test_logged_lr_is_the_rate_each_epoch_trained_at(scenes, tmp_path):
    result = train(_config(scenes, tmp_path / "run", lr_schedule="step", lr_step_epochs=[1],
                           lr_step_factor=0.5), progress=False)
    assert [h["lr"] for h in result.history] == pytest.approx([1e-3, 5e-4])


def test_resume_continues_exactly_where_it_stopped(scenes, tmp_path):
    straight = train(_config(scenes, tmp_path / "straight", epochs=2), progress=False)
    out = tmp_path / "run"
    train(_config(scenes, out, epochs=2), progress=False, stop_after_epochs=1)  # "interrupted" after epoch 1
    first = torch.load(out / LAST_CHECKPOINT, weights_only=True)
    resumed = train(_config(scenes, out, epochs=2), resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == first["history"][0]  # epoch 1 was not re-run
    # Optimizer, schedule and random state were restored: epoch 2 is the uninterrupted run's epoch 2.
    assert resumed.history[1]["train_loss"] == pytest.approx(straight.history[1]["train_loss"], rel=1e-5)
    assert resumed.history[1]["val"] == pytest.approx(straight.history[1]["val"], rel=1e-5)
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint_last.pt"):
        train(_config(scenes, tmp_path / "empty"), resume=True, progress=False)


def test_logged_loss_is_the_mean_over_batches(scenes, tmp_path):
    result = train(_config(scenes, tmp_path / "run", epochs=1), progress=False)
    # 42 training images in batches of 16 -> 3 steps; a sum-of-hinges batch loss is at most
    # 2 * B * (B - 1) * (margin + 2) with cosine scores in [-1, 1].
    assert 0 < result.history[0]["train_loss"] <= 2 * 16 * 15 * 2.2


def test_vsepp_schedule_trains_end_to_end(scenes, tmp_path):
    overrides = {**TINY_MODEL, "loss": {"kind": "max_hinge", "warmup_epochs": 1, "anneal_epochs": 0}}
    result = train(_config(scenes, tmp_path / "run", model_overrides=overrides), progress=False)
    assert len(result.history) == 2 and all(h["train_loss"] > 0 for h in result.history)
    # epoch 2 used the max of hinges: per batch at most 2 * B * (margin + 2)
    assert result.history[1]["train_loss"] <= 2 * 16 * 2.2


def test_init_from_a_checkpoint_keeps_weights_and_switches_the_loss(scenes, tmp_path):
    first = train(_config(scenes, tmp_path / "vse", epochs=1), progress=False)
    overrides = {"loss": {"kind": "max_hinge", "warmup_epochs": 0}}
    config = _config(scenes, tmp_path / "vsepp", epochs=1, lr=1e-12, warmup_steps=0,
                     init_from=str(first.best_checkpoint), model_overrides=overrides)
    second = train(config, progress=False)
    before, after = load_encoder(first.best_checkpoint), load_encoder(tmp_path / "vsepp" / LAST_CHECKPOINT)
    # a vanishing learning rate: the weights are the checkpoint's (BatchNorm statistics still move)
    assert torch.allclose(after.text_tower.embed.weight, before.text_tower.embed.weight, atol=1e-7)
    assert torch.allclose(after.image_tower.project.weight, before.image_tower.project.weight, atol=1e-7)
    assert after.config["loss"]["kind"] == "max_hinge" and before.config["loss"]["kind"] == "sum_hinge"
    assert second.history[0]["loss_terms"]["ranking"] <= 2 * 16 * 2.2  # max of hinges, not the sum


def test_train_and_evaluate_a_plain_captioned_folder(tmp_path):
    from models.data import generate_scenes
    from models.data.records import SPLITS

    source = load_records(generate_scenes(tmp_path / "scenes", 120, seed=2, image_size=32))
    folder = tmp_path / "folder"
    folder.mkdir()
    for record in source:  # re-shape as a user's folder: image + sidecar captions
        (folder / record.path.name).write_bytes(record.path.read_bytes())
        (folder / record.path.with_suffix(".txt").name).write_text("\n".join(record.captions))
    records = load_records(folder)
    assert {r.split for r in records} <= set(SPLITS) and any(r.split == "val" for r in records)
    result = train(_config(folder, tmp_path / "run", epochs=1), progress=False)
    assert result.best_metrics.n_images == sum(r.split == "val" for r in records)


def test_time_budget_stops_training(scenes, tmp_path):
    result = train(_config(scenes, tmp_path / "run", epochs=50, time_budget_minutes=0.0001), progress=False)
    assert len(result.history) == 1  # one (cut) epoch, evaluated, then the budget is spent


def test_training_on_synthetic_scenes_beats_chance(tmp_path):
    """A few epochs on 240 scenes must rank far better than chance (rsum of a random model ~ 6 * 100 * k / n)."""
    from models.data import generate_scenes

    data = generate_scenes(tmp_path / "scenes", 240, seed=5, image_size=32, max_objects=1, val_fraction=0.2,
                           test_fraction=0.0)
    result = train(_config(data, tmp_path / "run", epochs=10, lr=2e-3, model="vse_tiny_gru"), progress=False)
    chance_rsum = 6 * 100 * (1 + 5 + 10) / 3 / 48  # about 67 for 48 val images
    assert result.best_metrics.rsum > 2 * chance_rsum


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.slow
def test_cli_train_then_evaluate(scenes, tmp_path):
    config = tmp_path / "train.toml"
    config.write_text('model = "vse_tiny_gru"\nepochs = 1\nbatch_size = 16\nimage_size = 32\nhflip = false\n'
                      'model_overrides = { embed_dim = 32, text = { word_dim = 16 } }\n')
    trained = _cli("train", "--config", str(config), "--data", str(scenes), "--out-dir", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr
    assert "rsum" in trained.stdout and "epoch 1/1" in trained.stderr  # progress bar on stderr
    evaluated = _cli("evaluate", str(tmp_path / "run" / BEST_MODEL), "--data", str(scenes), "--split", "test",
                     "--json", str(tmp_path / "m.json"), "--cache-dir", str(tmp_path / "cache"))
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics["n_images"] == 6 and metrics["n_captions"] == 30
    assert "image->text" in evaluated.stdout and "text->image" in evaluated.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "/no/such/data"], "/no/such/data: dataset path not found"),
    (["train", "--config", "/no/config.toml"], "/no/config.toml: training config not found"),
    (["evaluate", "/no/model.pt", "--data", "x"], "/no/model.pt: checkpoint file not found"),
    (["train", "--data", ".", "--model", "nope"], "unknown encoder 'nope'"),
    (["train", "--data", ".", "--epochs", "0"], "epochs must be >= 1"),
])
def test_cli_errors_are_one_line_without_traceback(args, message):
    done = _cli(*args)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr


def test_word_dropout_leaves_words_out_but_never_all():
    import random

    from models.training.trainer import drop_words

    rng = random.Random(0)
    caption = "a large red square in the centre"
    dropped = [drop_words(caption, 0.5, rng) for _ in range(200)]
    lengths = [len(d.split()) for d in dropped]
    assert min(lengths) >= 1 and max(lengths) <= 7 and 2.5 < sum(lengths) / len(lengths) < 4.5
    assert all(set(d.split()) <= set(caption.split(" ")) for d in dropped)
    assert drop_words("square", 0.99, rng) == "square"
    with pytest.raises(ValueError, match="word_dropout"):
        TrainConfig.from_dict({"word_dropout": 1.0})


def test_a_misspelt_training_option_fails_naming_it_and_the_file(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('model = "vse_tiny_gru"\nepochz = 3\n')
    with pytest.raises(ValueError, match=r"run\.toml: unknown training option\(s\): epochz \(did you mean epochs\?\)"):
        TrainConfig.from_file(config)
    config.write_text('epochs = "3"\n')
    with pytest.raises(ValueError, match=r"run\.toml: training option epochs = '3': expected int"):
        TrainConfig.from_file(config)
