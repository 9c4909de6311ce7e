"""Representation quality of one model's frozen features (`effscale analyze representation`):
pooled `forward_features` of held-out images, then

- linear separability: a logistic-regression probe (scikit-learn, the `analysis` extra) trained
  on n images per class (several n) and scored on other images; with the feature dimension d and
  Cover's ratio N / d of its training set (a linear probe on more than about 2 d points in
  general position can no longer separate arbitrary labels, so accuracy there is a property of
  the features, not of the probe's capacity);
- few-shot: prototypical-network episodes (Snell et al. 2017): N classes, K support images each,
  the prototype of a class the mean of its support features, each query assigned to the nearest
  prototype by Euclidean or cosine distance; the mean accuracy over the episodes with its 95 %
  confidence interval (1.96 standard errors);
- class geometry: the between-class scatter (mean squared distance of the class means from their
  centre), the within-class variance (mean squared distance of the features from their class
  mean) and their ratio, a Fisher-style separability.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import EffscaleError, require


@torch.no_grad()
def features(model, inputs: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Pooled frozen features (N x d) of preprocessed `inputs`, in eval mode."""
    model.eval()
    rows = [model.forward_head(model.forward_features(inputs[i:i + batch]), pre_logits=True)
            for i in range(0, len(inputs), batch)]
    return torch.cat(rows).float().numpy()


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 per_class: int, seed: int = 0) -> dict:
    """Accuracy (%) of a logistic regression on `per_class` training images of each class."""
    require("sklearn", "analysis")
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(train_y == c))[:per_class] for c in np.unique(train_y)])
    scaler = StandardScaler().fit(train_x[chosen])
    probe = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(train_x[chosen]), train_y[chosen])
    accuracy = float((probe.predict(scaler.transform(test_x)) == test_y).mean())
    return {"per_class": per_class, "train_images": int(len(chosen)),
            "cover_ratio": round(len(chosen) / train_x.shape[1], 3), "accuracy": round(100 * accuracy, 3)}


def few_shot(x: np.ndarray, y: np.ndarray, *, ways: int = 5, shots: int = 1, queries: int = 15,
             episodes: int = 600, metric: str = "euclidean", seed: int = 0) -> dict:
    """Prototypical-network accuracy (%) over `episodes` N-way K-shot episodes, with its 95 % CI."""
    if metric not in ("euclidean", "cosine"):
        raise EffscaleError(f"metric {metric!r} is unknown; allowed: euclidean, cosine")
    classes = np.unique(y)
    if len(classes) < ways:
        raise EffscaleError(f"{ways}-way episodes need {ways} classes; the data has {len(classes)}")
    members = {c: np.flatnonzero(y == c) for c in classes}
    short = [c for c, idx in members.items() if len(idx) < shots + queries]
    if short:
        raise EffscaleError(f"class {short[0]!r} has {len(members[short[0]])} images; {shots}-shot episodes with "
                            f"{queries} queries need {shots + queries} per class")
    rng = np.random.default_rng(seed)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    accuracies = np.empty(episodes)
    for episode in range(episodes):
        chosen = rng.choice(classes, ways, replace=False)
        support, query, truth = [], [], []
        for k, c in enumerate(chosen):
            picked = rng.choice(members[c], shots + queries, replace=False)
            support.append(x[picked[:shots]].mean(0))
            query.append(x[picked[shots:]])
            truth.append(np.full(queries, k))
        prototypes, query, truth = np.stack(support), np.concatenate(query), np.concatenate(truth)
        if metric == "cosine":
            prototypes = prototypes / np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
            predicted = (query @ prototypes.T).argmax(1)
        else:
            distances = ((query[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)
            predicted = distances.argmin(1)
        accuracies[episode] = (predicted == truth).mean()
    half = 1.96 * accuracies.std(ddof=1) / math.sqrt(episodes) if episodes > 1 else float("nan")
    return {"ways": ways, "shots": shots, "queries": queries, "episodes": episodes, "metric": metric,
            "accuracy": round(100 * float(accuracies.mean()), 3), "ci95": round(100 * half, 3)}


def class_geometry(x: np.ndarray, y: np.ndarray) -> dict:
    """Between-class scatter, within-class variance and their ratio (see the module docstring)."""
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    between = float(((means - means.mean(0)) ** 2).sum(1).mean())
    within = float(np.mean([((x[y == c] - means[k]) ** 2).sum(1).mean() for k, c in enumerate(classes)]))
    return {"between": round(between, 6), "within": round(within, 6),
            "ratio": round(between / within, 6) if within > 0 else float("inf")}


__all__ = ["class_geometry", "features", "few_shot", "linear_probe"]
