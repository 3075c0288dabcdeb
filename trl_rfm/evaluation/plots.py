"""Plots of few-shot adaptation results."""

import os

import numpy as np


METHOD_LABELS = {
    "rfm": "RFM (adapted)",
    "bt": "Bradley-Terry RM (non-adaptive)",
    "linear": "linear on BT features",
    "id_rm": "user id in prompt",
    "oracle": "oracle (true weights)",
}


def plot_accuracy_vs_k(
    accuracy: dict[str, dict[str, dict]], shots: list[int], path: str | os.PathLike, title: str
) -> None:
    """Accuracy against k (symlog axis, so k = 0 shows), mean ± std over draws, one line per method:
    `accuracy[method][str(k)] = {"mean", "std", ...}` as in [`AdaptationEvaluationResult`]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for method, by_k in accuracy.items():
        ks = [k for k in shots if str(k) in by_k]
        mean = np.array([by_k[str(k)]["mean"] for k in ks])
        std = np.array([by_k[str(k)]["std"] for k in ks])
        style = {"linestyle": "--"} if method in ("bt", "oracle") else {"marker": "o"}
        (line,) = axis.plot(ks, mean, label=METHOD_LABELS.get(method, method), **style)
        axis.fill_between(ks, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    axis.set_xscale("symlog", linthresh=5)
    axis.set_xticks(shots)
    axis.set_xticklabels([str(k) for k in shots])
    axis.set_xlabel("k: comparisons of the new user used to adapt")
    axis.set_ylabel("accuracy on the user's test comparisons")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
