"""The per-epoch training plot: loss, and R@1/5/10 both ways."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, recall_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o")
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="mean batch loss")
    for prefix, style in (("i2t", "-"), ("t2i", "--")):
        for k in (1, 5, 10):
            recall_ax.plot(epochs, [h["val"][f"{prefix}_r{k}"] for h in history], style, marker="o",
                           label=f"{prefix} R@{k}")
    recall_ax.set(title="validation recall", xlabel="epoch", ylabel="%")
    recall_ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
