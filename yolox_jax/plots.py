"""Pictures of a run: training curves from metrics.jsonl, PR curves, a confusion matrix.

matplotlib (the `.[plots]` extra) with the Agg backend: files only, no display needed. Each
function writes one PNG and returns its path.

* `plot_results(workdir)` -> `workdir/results.png`: per epoch, the mean of each logged loss term
  (total, iou, obj, cls, l1), the learning rate, and the evaluation numbers (COCO AP / AP50 or
  VOC mAP@0.5 / mAP@0.5:0.95), from the `train` / `eval` rows of `metrics.jsonl`.
* `plot_pr_curves(curves, path)`: precision against recall, one line per class, their mean bold.
* `plot_confusion_matrix(matrix, names, path)`: `eval.confusion.confusion_matrix`'s counts,
  each column (true class) normalised to 1, counts printed when there are few classes.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LOSS_TERMS = ("total", "iou", "obj", "cls", "l1")
EVAL_KEYS = (("AP", "AP50:95"), ("AP50", "AP50"), ("mAP50_95", "mAP50:95"), ("mAP50", "mAP50"))


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed (the `.[plots]` extra)."""


class MetricsError(ValueError):
    """A metrics.jsonl that cannot be plotted (names the file and line)."""


def require_matplotlib() -> Any:
    """matplotlib.pyplot with the Agg backend, or PlotsUnavailable saying what to install."""
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(
            "plots need matplotlib: pip install 'yolox-jax[plots]' (or matplotlib)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | os.PathLike) -> tuple[dict, dict]:
    """metrics.jsonl -> ({epoch: {term: mean}}, {epoch: {eval key: value}}). Train rows are
    averaged per epoch (rows are logged every print_interval steps); eval rows at epoch 0 are
    the evaluation before training."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {str(path)!r} does not exist (a training "
                                "workdir has metrics.jsonl)")
    sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    evals: dict[int, dict[str, float]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MetricsError(f"{path}:{n}: not a json line ({e})") from None
        epoch = int(row.get("epoch", 0))
        if row.get("kind") == "train":
            for k in (*LOSS_TERMS, "lr"):
                v = row.get(k)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    sums[epoch][k].append(float(v))
        elif row.get("kind") == "eval":
            evals[epoch] = {k: float(row[k]) for k, _ in EVAL_KEYS
                            if isinstance(row.get(k), (int, float))}
    train = {e: {k: float(np.mean(v)) for k, v in terms.items()} for e, terms in sums.items()}
    return dict(sorted(train.items())), dict(sorted(evals.items()))


def plot_results(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """`workdir/metrics.jsonl` (or that file itself) -> results.png (default: in the workdir)."""
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    src = Path(workdir)
    metrics = src if src.is_file() else src / "metrics.jsonl"
    train, evals = read_metrics(metrics)
    if not train and not evals:
        raise MetricsError(f"{metrics} has no train or eval rows to plot")
    out = Path(out) if out is not None else metrics.parent / "results.png"
    panels = [(k, k if k != "total" else "total loss") for k in LOSS_TERMS] + [("lr", "lr")]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), constrained_layout=True)
    epochs = list(train)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        xs = [e for e in epochs if key in train[e]]
        ax.plot(xs, [train[e][key] for e in xs], marker="o", ms=3, lw=1.5)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax = axes.flat[len(panels)]
    for key, label in EVAL_KEYS:
        xs = [e for e, v in evals.items() if key in v]
        if xs:
            ax.plot(xs, [evals[e][key] for e in xs], marker="o", ms=4, lw=1.5, label=label)
    ax.set_title("evaluation")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center",
                transform=ax.transAxes)
    axes.flat[-1].axis("off")
    fig.suptitle(f"{metrics.parent.name}: per-epoch means of the logged steps")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
                   path: str | os.PathLike, iou: float = 0.5) -> Path:
    """{class: (recall, precision, AP)} -> PR_curve.png (legend with the APs up to 20 classes)."""
    plt = require_matplotlib()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 6), constrained_layout=True)
    grid = np.linspace(0, 1, 101)
    interp = []
    few = len(curves) <= 20
    for name, (rec, prec, ap) in curves.items():
        rec, prec = np.asarray(rec, np.float64), np.asarray(prec, np.float64)
        if len(rec):
            env = np.maximum.accumulate(prec[::-1])[::-1]  # the precision envelope
            interp.append(np.interp(grid, rec, env, right=0.0))
        else:
            interp.append(np.zeros_like(grid))
        label = f"{name} {ap:.3f}" if few and math.isfinite(ap) else (name if few else None)
        ax.plot(rec, prec, lw=1, alpha=0.8 if few else 0.3, label=label)
    aps = [ap for _, _, ap in curves.values() if math.isfinite(ap)]
    mean_ap = float(np.mean(aps)) if aps else float("nan")
    if interp:
        ax.plot(grid, np.mean(interp, axis=0), lw=3, color="k",
                label=f"all classes {mean_ap:.3f} AP@{iou:g}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"precision-recall at IoU {iou:g}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str],
                          path: str | os.PathLike) -> Path:
    """[C + 1, C + 1] counts (rows predicted, columns true, last background) -> a heat map of
    each column normalised to 1."""
    plt = require_matplotlib()
    path = Path(path)
    m = np.asarray(matrix, np.float64)
    names = [*class_names, "background"]
    if m.shape != (len(names), len(names)):
        raise ValueError(f"matrix {m.shape} for {len(class_names)} classes + background")
    col = m.sum(axis=0, keepdims=True)
    norm = np.divide(m, col, out=np.zeros_like(m), where=col > 0)
    side = min(4 + 0.45 * len(names), 24)
    fig, ax = plt.subplots(figsize=(side, side * 0.85), constrained_layout=True)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    ticks = np.arange(len(names))
    show = names if len(names) <= 100 else [""] * len(names)
    size = 9 if len(names) <= 30 else 6
    ax.set_xticks(ticks, show, rotation=90, fontsize=size)
    ax.set_yticks(ticks, show, fontsize=size)
    if len(names) <= 30:
        for i in range(len(names)):
            for j in range(len(names)):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="true", ylabel="predicted", title="confusion matrix (IoU 0.5)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
