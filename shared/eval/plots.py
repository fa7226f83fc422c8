"""Pictures of results: embedding maps (Zhong et al. Fig. 5)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
import numpy as np
from sklearn.manifold import TSNE

MAX_POINTS = 3000
MAX_COLOURS = 10


def tsne_by_label(vectors: np.ndarray, labels: Sequence[Sequence[str]], path: Path,
                  title: str, seed: int = 0) -> Path:
    """2-D t-SNE of ``vectors``, each point coloured by the rarest of its labels among the
    10 most common (the most specific thing said about the image); others in grey."""
    if len(vectors) != len(labels):
        raise ValueError(f"{len(vectors)} vectors but {len(labels)} label lists")
    counts = Counter(label for row in labels for label in row)
    shown = [label for label, _ in counts.most_common(MAX_COLOURS)]
    colour_of = []
    for row in labels:
        candidates = [label for label in row if label in shown]
        colour_of.append(min(candidates, key=counts.__getitem__) if candidates else None)
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(vectors))[:MAX_POINTS]
    points = TSNE(n_components=2, init="pca", random_state=seed,
                  perplexity=min(30.0, max(2.0, (len(keep) - 1) / 3))
                  ).fit_transform(np.asarray(vectors)[keep])
    figure, axes = plt.subplots(figsize=(8, 7), dpi=110)
    chosen = [colour_of[i] for i in keep]
    grey = np.array([label is None for label in chosen])
    axes.scatter(points[grey, 0], points[grey, 1], s=4, c="lightgrey", label="other")
    palette = plt.get_cmap("tab10")
    for position, label in enumerate(shown):
        mask = np.array([c == label for c in chosen])
        if mask.any():
            axes.scatter(points[mask, 0], points[mask, 1], s=5, color=palette(position),
                         label=label)
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(markerscale=3, fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
