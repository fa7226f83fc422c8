"""Losses more than one model trains with."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def softmax_targets(hashtags: Sequence[Sequence[int]], n_hashtags: int) -> torch.Tensor:
    """Each post's target distribution for the multi-class logistic loss: 1/|H_j| on each
    of its hashtags."""
    targets = torch.zeros(len(hashtags), n_hashtags)
    for row, ids in enumerate(hashtags):
        targets[row, list(ids)] = 1.0 / len(ids)
    return targets


def multiclass_log_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Veit's multi-class logistic loss: −mean_j Σ_h t_jh log softmax(logits_j)_h, with
    ``targets`` from softmax_targets."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
