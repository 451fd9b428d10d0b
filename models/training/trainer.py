"""The training loop shared by every encoder family.

Each epoch pairs every training image with one of its captions (drawn at random), runs the
family's `training_losses`, then evaluates Recall@K on the validation split, writes the
per-epoch metrics (JSON + PNG), the resumable checkpoint and, when rsum improves, the best model.
"""

from __future__ import annotations

import json
import math
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.data import BackboneFeatures, DecodedSplit, decode_split, load_records, select_split
from models.data.records import ImageRecord
from models.encoders import Encoder, create_encoder, load_encoder, needs_vocabulary
from models.encoders.registry import family_class, get_encoder_config, merge_config, without_pretrained
from models.encoders.text_towers import SentenceTransformerTower
from models.evaluation import RetrievalMetrics, evaluate_encoder
from models.io import atomic_torch_save
from models.training.config import TrainConfig
from models.training.feature_cache import VIEWS, cached_features, choose_views, feature_split, pick_views
from models.training.plots import plot_history
from models.vocab import Vocabulary

LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_MODEL = "model_best.pt"


@dataclass
class TrainResult:
    best_checkpoint: Path
    best_metrics: RetrievalMetrics | None
    history: list[dict]
    wall_seconds: float
    peak_memory_mb: float


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          stop_after_epochs: int | None = None) -> TrainResult:
    """Train `config.model` on `config.data`; returns where the best model is and its metrics.

    With `resume`, training continues from `config.out_dir`'s last checkpoint under the config saved
    there (only `epochs` may grow), so the schedule and data stay those the run started with.
    `stop_after_epochs` ends this call early, as an interruption would (resume continues it)."""
    started = time.perf_counter()
    out_dir = Path(config.out_dir)
    state = _load_state(out_dir, resume)
    if state:
        config = TrainConfig.from_dict(state["train_config"], epochs=max(config.epochs, len(state["history"])))
    _seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(config.data)
    device = config.resolved_device()
    encoder = load_encoder(out_dir / LAST_CHECKPOINT) if state else _new_encoder(config, records)
    encoder.to(device).train()
    train_split, val_split = decode_splits(config, records, encoder.image_size, progress)
    train_split, val_split = with_cached_features(encoder, train_split, val_split, config, progress)
    precompute_frozen_text(encoder, [train_split, val_split], config, progress)
    encoder.attach_training_records(train_split.records)
    if config.select_by != "rsum" and not encoder.describes_images:
        raise ValueError(f"select_by = {config.select_by!r}: {encoder.name!r} generates no captions to score")
    if config.train_only:
        _freeze_all_but(encoder, config.train_only)
    optimizer = torch.optim.AdamW(_parameter_groups(encoder, config.lr), lr=config.lr,
                                  weight_decay=config.weight_decay)
    discriminator_optimizer = encoder.discriminator_optimizer()
    steps_per_epoch = math.ceil(_pairs_per_epoch(train_split, config) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, steps_per_epoch))
    history: list[dict] = state["history"] if state else []
    best_score = max((_selection_score(h, config.select_by) for h in history), default=-math.inf)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if discriminator_optimizer is not None and state.get("discriminator_optimizer"):
            discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        _restore_rng(state["rng"])
    optimizers = _Optimizers(optimizer, scheduler, discriminator_optimizer)
    budget = config.time_budget_minutes * 60 if config.time_budget_minutes else None
    spent = sum(h["train_seconds"] for h in history)
    last_epoch = config.epochs if stop_after_epochs is None else min(config.epochs,
                                                                      len(history) + stop_after_epochs)
    for epoch in range(len(history), last_epoch):
        if budget is not None and spent >= budget:
            break
        stats = _train_one_epoch(encoder, optimizers, train_split, config, epoch,
                                 None if budget is None else budget - spent, progress)
        spent += stats["train_seconds"]
        metrics = evaluate_encoder(encoder, val_split)
        generation = encoder.generation_metrics(val_split)
        history.append({"epoch": epoch + 1, **encoder.describe_epoch(epoch), **stats,
                        "val": metrics.as_dict(), **({"val_generation": generation} if generation else {}),
                        "peak_memory_mb": _peak_memory_mb()})
        score = _selection_score(history[-1], config.select_by)
        if score > best_score:
            best_score = score
            encoder.save(out_dir / BEST_MODEL)
        _save_state(out_dir, encoder, optimizers, history, config)
        _report_epoch(history[-1], progress)
    best = max(history, key=lambda h: _selection_score(h, config.select_by)) if history else None
    best_metrics = RetrievalMetrics(**best["val"]) if best else None
    return TrainResult(out_dir / BEST_MODEL, best_metrics, history, time.perf_counter() - started, _peak_memory_mb())


@dataclass
class _Optimizers:
    main: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    discriminator: torch.optim.Optimizer | None  # for families with an adversarial step (GXN)


def _selection_score(entry: dict, metric: str) -> float:
    """An epoch's score for choosing model_best: its val rsum, or a val caption metric."""
    if metric == "rsum":
        return entry["val"]["rsum"]
    if metric not in entry.get("val_generation", {}):
        raise ValueError(f"select_by = {metric!r}: this model generates no captions to score")
    return entry["val_generation"][metric]


def _parameter_groups(encoder: Encoder, lr: float) -> list[dict]:
    """The main optimizer's parameters (the adversarial ones have their own); a trained image
    backbone gets its own group when its learning rate is scaled (`image.backbone_lr_scale`)."""
    adversarial = {id(p) for p in encoder.discriminator_parameters()}
    main = [p for p in encoder.parameters() if p.requires_grad and id(p) not in adversarial]
    tower = getattr(encoder, "image_tower", None)
    scale = getattr(tower, "backbone_lr_scale", 1.0)
    if scale == 1.0:
        return [{"params": main}]
    in_backbone = {id(p) for p in tower.backbone.parameters()}
    return [{"params": [p for p in main if id(p) not in in_backbone]},
            {"params": [p for p in main if id(p) in in_backbone], "lr": lr * scale}]


def _freeze_all_but(encoder: Encoder, prefixes: list[str]) -> None:
    """`train_only`: of the main optimizer's parameters, only those under one of `prefixes` (module
    paths: "decoder" is `decoder.*`) train; nothing frozen before is unfrozen. A discriminator keeps
    its own optimizer and is left as it is."""
    adversarial = {id(p) for p in encoder.discriminator_parameters()}
    named = {name: p for name, p in encoder.named_parameters() if id(p) not in adversarial}
    trained = {name for name in named if any(name == p or name.startswith(p + ".") for p in prefixes)}
    if not trained:
        raise ValueError(f"train_only = {prefixes}: no parameter of {encoder.name!r} lies under these "
                         f"(top-level modules: {', '.join(sorted({n.split('.')[0] for n in named}))})")
    for name, parameter in named.items():
        parameter.requires_grad_(parameter.requires_grad and name in trained)


def _hold_fixed_modules(encoder: Encoder) -> None:
    """Modules with nothing to train run in eval mode: their batch-norm statistics stay as they
    were and their dropout is off, so a fixed embedding really stays fixed."""
    for module in encoder.modules():
        weights = [*module.parameters(), *module.buffers()]  # a bare Dropout has none: it follows its parent
        if weights and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def _new_encoder(config: TrainConfig, records: list[ImageRecord]) -> Encoder:
    if config.init_from:
        return _warm_start(config, select_split(records, "train"))
    model_config = merge_config(get_encoder_config(config.model), config.model_overrides)
    if config.image_size:
        if model_config.get("family") == "openclip" or model_config.get("image", {}).get("backbone") == "openclip":
            raise ValueError("image_size cannot be overridden for open_clip towers: their position embeddings "
                             "fix it (set image_size in the model's model_cfg instead)")
        model_config["image_size"] = config.image_size
    train_records = select_split(records, "train")
    model_config = family_class(model_config).config_for_training_set(model_config, train_records)
    vocab = None
    if needs_vocabulary(model_config):
        captions = [c for r in train_records for c in r.captions]
        if not captions:
            raise ValueError(f"{config.data}: the train split has no captions to build a vocabulary from")
        vocab = Vocabulary.build(captions, min_count=config.min_word_count)
    encoder = create_encoder(config.model, vocab=vocab, config=model_config)
    encoder.prepare_for_training(train_records)
    return encoder


def _warm_start(config: TrainConfig, train_records: list[ImageRecord]) -> Encoder:
    """Start from a trained checkpoint's weights and vocabulary; `model_overrides` may change the
    loss (e.g. switch a VSE0 model to VSE++'s hardest negatives) or add a branch the source was
    built without (GXN's imagine branch). Weights tied to the old training set (a Dual-Path instance
    classifier over other images) and those of an added branch start anew."""
    source = load_encoder(config.init_from)
    model_config = merge_config(source.config, config.model_overrides)
    model_config = family_class(model_config).config_for_training_set(model_config, train_records)
    vocab_words = source.vocabulary_words()
    encoder = create_encoder(source.name, vocab=Vocabulary(vocab_words) if vocab_words else None,
                             config=without_pretrained(model_config))
    own = encoder.state_dict()
    weights = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    fresh = sorted(set(own) - set(weights))
    if fresh:
        print(f"init_from: {len(fresh)} tensor(s) start anew (new, or their shape changed): {', '.join(fresh[:4])}")
    encoder.load_state_dict(weights, strict=not fresh)
    return encoder


def decode_splits(config: TrainConfig, records: list[ImageRecord], image_size: int, progress: bool
                   ) -> tuple[DecodedSplit, DecodedSplit]:
    cache = Path(config.cache_dir) if config.cache_dir else None
    train_size = image_size + image_size // 8 if config.augment else image_size
    train_split = decode_split(records, "train", train_size, cache, workers=config.workers, progress=progress)
    val_records = select_split(records, config.val_split)[: config.val_max_images or None]
    val_split = decode_split(val_records, config.val_split, image_size, cache, workers=config.workers,
                             progress=progress)
    for name, split in (("train", train_split), (config.val_split, val_split)):
        if len(split.report):
            print(f"[{name}] {split.report.summary()}")
        if len(split) < 2:
            raise ValueError(f"{config.data}: the {name} split has {len(split)} usable captioned images "
                             "(need at least 2)")
    return train_split, val_split


def with_cached_features(encoder: Encoder, train_split: DecodedSplit, val_split: DecodedSplit,
                          config: TrainConfig, progress: bool) -> tuple[DecodedSplit, DecodedSplit]:
    """For a frozen image backbone: both splits with their pixels replaced by backbone features
    computed once (several views per training image, the centre view for validation)."""
    tower = encoder.frozen_backbone()
    if tower is None or not config.cache_features:
        return train_split, val_split
    encoder.use_backbone_runtime(config.backbone_runtime)
    cache = Path(config.cache_dir) if config.cache_dir else None
    # Without the augmentation slack every crop is the centre: only mirroring can differ.
    count = config.feature_views if config.augment else min(config.feature_views, 1 + config.hflip)
    views = choose_views(min(count, len(VIEWS) if config.hflip else len(VIEWS) // 2), config.hflip)
    size, thumbnail = encoder.image_size, encoder.thumbnail_size
    train = cached_features(tower, train_split, size, views, cache, progress=progress)
    val = cached_features(tower, val_split, size, views[:1], cache, progress=progress)[:, 0]
    return feature_split(train_split, train, thumbnail, size), feature_split(val_split, val, thumbnail, size)


def precompute_frozen_text(encoder: Encoder, splits: list[DecodedSplit], config: TrainConfig,
                            progress: bool) -> None:
    """A frozen sentence encoder's features of every caption, computed once (cached on disk)."""
    captions = [c for split in splits for c in split.pairs.captions]
    cache = Path(config.cache_dir) if config.cache_dir else None
    done: set[int] = set()  # towers sharing one model (GXN's two heads) share its memo too
    for module in encoder.modules():
        if isinstance(module, SentenceTransformerTower) and module.freeze and id(module.transformer) not in done:
            module.precompute(captions, cache, progress)
            done.add(id(module.transformer))


def _training_images(pixels: torch.Tensor | BackboneFeatures, batch: torch.Tensor, size: int,
                     config: TrainConfig) -> torch.Tensor | BackboneFeatures:
    """A batch's images: one random cached view each, or augmented uint8 crops."""
    if isinstance(pixels, BackboneFeatures):
        return pick_views(pixels[batch])
    return _augment(pixels[batch], size, config)


def _lr_lambda(config: TrainConfig, steps_per_epoch: int):
    total = max(1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.lr_schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if config.lr_schedule == "step":
            epoch = step // steps_per_epoch
            return warm * config.lr_step_factor ** sum(epoch >= e for e in config.lr_step_epochs)
        return warm

    return factor


def drop_words(caption: str, chance: float, rng: random.Random | None = None) -> str:
    """The caption with each word left out with `chance` (one word always stays). Trained on such
    partial captions, a text tower also reads the short phrases and single words that people type
    and that image - word + word adds and subtracts, not only whole sentences."""
    rng = rng or random  # the module's generator, seeded by the trainer
    words = caption.split()
    kept = [w for w in words if rng.random() >= chance]
    return " ".join(kept) if kept else rng.choice(words) if words else caption


def _train_one_epoch(encoder: Encoder, optimizers: _Optimizers, split: DecodedSplit, config: TrainConfig,
                     epoch: int, time_left: float | None, progress: bool) -> dict:
    encoder.train()
    if config.train_only:
        _hold_fixed_modules(encoder)
    batches = _epoch_batches(split, config)
    stage = encoder.describe_epoch(epoch).get("stage")
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}" + (f" [stage {stage}]" if stage else ""),
               unit="batch", disable=not progress)
    started, seen, steps, total_loss, terms = time.perf_counter(), 0, 0, 0.0, {}
    lr = optimizers.scheduler.get_last_lr()[0]
    for batch in bar:
        batch, caption_ids = _batch_pairs(split, batch, config)
        pixels = _training_images(split.pixels, batch, encoder.image_size, config).to(encoder.device,
                                                                                     non_blocking=True)
        captions = [split.pairs.captions[i] if i is not None else random.choice(split.records[b].captions)
                    for i, b in zip(caption_ids, batch.tolist(), strict=True)]
        if config.word_dropout:
            captions = [drop_words(c, config.word_dropout) for c in captions]
        adversary = _discriminator_step(encoder, optimizers.discriminator, pixels, captions, epoch, steps)
        losses = encoder.training_losses(pixels, captions, epoch, image_ids=batch)
        _check_finite(losses["loss"], epoch, steps)
        if not losses["loss"].requires_grad:
            raise ValueError(f"epoch {epoch + 1} ({stage or 'training'}): the loss reaches no trained parameter"
                             + (f" (train_only = {config.train_only})" if config.train_only else ""))
        optimizers.main.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in optimizers.main.param_groups for p in g["params"]],
                                           config.grad_clip)
        optimizers.main.step()
        lr = optimizers.scheduler.get_last_lr()[0]  # the rate this step used; step() moves on to the next
        optimizers.scheduler.step()
        seen += len(batch)
        steps += 1
        total_loss += float(losses["loss"].detach())
        for name, value in [*losses.items(), *adversary.items()]:
            terms[name] = terms.get(name, 0.0) + float(value.detach())
        elapsed = time.perf_counter() - started
        bar.set_postfix(loss=f"{float(losses['loss'].detach()):.3f}", img_s=f"{seen / elapsed:.0f}")
        if time_left is not None and elapsed >= time_left:
            break
    bar.close()
    elapsed = time.perf_counter() - started
    steps = max(1, steps)
    return {"train_loss": total_loss / steps, "loss_terms": {k: v / steps for k, v in terms.items()},
            "train_seconds": elapsed, "images_per_second": seen / max(elapsed, 1e-9), "images_seen": seen,
            "lr": lr}


def _pairs_per_epoch(split: DecodedSplit, config: TrainConfig) -> int:
    return len(split.pairs.captions) if config.epoch_pairs == "all_captions" else len(split)


def _epoch_batches(split: DecodedSplit, config: TrainConfig) -> list[torch.Tensor]:
    """Shuffled batches of image indices (one_per_image) or caption indices (all_captions)."""
    count = _pairs_per_epoch(split, config)
    order = torch.randperm(count)
    batches = [order[i:i + config.batch_size] for i in range(0, count, config.batch_size)]
    return [b for b in batches if len(b) >= 2]  # a batch of one has no negatives


def _batch_pairs(split: DecodedSplit, batch: torch.Tensor, config: TrainConfig
                 ) -> tuple[torch.Tensor, list[int | None]]:
    """(image indices, caption indices) for a batch from `_epoch_batches`; a caption index is None
    where the image's caption is drawn at random (one_per_image)."""
    if config.epoch_pairs == "all_captions":
        owners = split.pairs.caption_to_image
        return torch.tensor([owners[i] for i in batch.tolist()]), batch.tolist()
    return batch, [None] * len(batch)


def _discriminator_step(encoder: Encoder, optimizer: torch.optim.Optimizer | None, pixels: torch.Tensor,
                        captions: list[str], epoch: int, step: int) -> dict[str, torch.Tensor]:
    """One discriminator update before the generator/embedding update (the alternating GAN schedule)."""
    losses = encoder.discriminator_losses(pixels, captions, epoch) if optimizer is not None else None
    if not losses:
        return {}
    _check_finite(losses["loss"], epoch, step)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {f"discriminator_{name}": value.detach() for name, value in losses.items()}


def _check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"epoch {epoch + 1}, step {step + 1}: the loss is {float(loss)}; "
                                 "lower the learning rate (the last good checkpoint is kept)")


def _augment(pixels: torch.Tensor, size: int, config: TrainConfig) -> torch.Tensor:
    """Random size x size crops (per image) and, if enabled, horizontal flips, on uint8 pixels.
    Without augmentation the split is decoded at `size` already (see `decode_splits`)."""
    if pixels.shape[-1] == size:
        return pixels
    slack = pixels.shape[-1] - size
    out = torch.empty(pixels.shape[0], 3, size, size, dtype=torch.uint8)
    for i, image in enumerate(pixels):
        top, left = random.randint(0, slack), random.randint(0, slack)
        crop = image[:, top:top + size, left:left + size]
        out[i] = crop.flip(-1) if config.hflip and random.random() < 0.5 else crop
    return out


def _save_state(out_dir: Path, encoder: Encoder, optimizers: _Optimizers, history: list[dict],
                config: TrainConfig) -> None:
    state = {"encoder": encoder.checkpoint_payload(), "optimizer": optimizers.main.state_dict(),
             "scheduler": optimizers.scheduler.state_dict(), "history": history, "train_config": config.as_dict(),
             "rng": _rng_state()}
    if optimizers.discriminator is not None:
        state["discriminator_optimizer"] = optimizers.discriminator.state_dict()
    atomic_torch_save(state, out_dir / LAST_CHECKPOINT)
    (out_dir / "metrics.json").write_text(json.dumps({"config": config.as_dict(), "history": history}, indent=1))
    plot_history(history, out_dir / "metrics.png")


def _load_state(out_dir: Path, resume: bool) -> dict | None:
    path = out_dir / LAST_CHECKPOINT
    if not resume:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {LAST_CHECKPOINT} in {out_dir}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _report_epoch(entry: dict, progress: bool) -> None:
    if not progress:
        return
    val = entry["val"]
    stage = f" [stage {entry['stage']}]" if "stage" in entry else ""
    print(f"epoch {entry['epoch']}{stage}: loss {entry['train_loss']:.4f}, {entry['images_per_second']:.0f} img/s, "
          f"val rsum {val['rsum']:.1f} (i2t R@1 {val['i2t_r1']:.1f}, t2i R@1 {val['t2i_r1']:.1f})"
          + "".join(f", {k} {v:.3f}" for k, v in entry.get("val_generation", {}).items()), flush=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": list(random.getstate()[1]), "torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), None))
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
