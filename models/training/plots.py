"""The per-epoch training plot: loss, R@1/5/10 both ways, and caption BLEU-4/CIDEr-D where a family
generates captions."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    generation = [h for h in history if h.get("val_generation")]  # families with a caption decoder
    fig, axes = plt.subplots(1, 3 if generation else 2, figsize=(16 if generation else 11, 4))
    loss_ax, recall_ax = axes[0], axes[1]
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o")
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="mean batch loss")
    for prefix, style in (("i2t", "-"), ("t2i", "--")):
        for k in (1, 5, 10):
            recall_ax.plot(epochs, [h["val"][f"{prefix}_r{k}"] for h in history], style, marker="o",
                           label=f"{prefix} R@{k}")
    recall_ax.set(title="validation recall", xlabel="epoch", ylabel="%")
    recall_ax.legend(fontsize=8, ncol=2)
    if generation:
        for metric in ("bleu4", "cider_d"):
            axes[2].plot([h["epoch"] for h in generation], [h["val_generation"][metric] for h in generation],
                         marker="o", label=metric)
        axes[2].set(title="generated captions (greedy)", xlabel="epoch", ylabel="score")
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
