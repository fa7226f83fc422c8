"""Small user lookups with hand-set weights, for tests that need a model without training."""

from __future__ import annotations

import numpy as np
import torch

from services.user.effects import ContentModel, MainEffects
from services.user.lookup import UserHashtagLookup
from services.user.model import TensorModel, TensorParams


def small_lookup(with_effects: bool, features: int = 8) -> UserHashtagLookup:
    """40 hashtags, 3 users (ann, bob, cy with 1, 10, 100 posts), 8-d features (or
    ``features``: 1280 for a service, which checks photos against the CNN's width); a
    non-zero core and, ``with_effects``, main effects with lifts far from 1."""
    torch.manual_seed(0)
    params = TensorParams(hashtag_dim=16, photo_dim=12, user_dim=4)
    model = TensorModel(40, 3, features, params)
    with torch.no_grad():  # as if trained: a tensor term that is not zero
        model.core.normal_(std=0.3)
    model.register_buffer("feature_mean", torch.zeros(features))
    model.register_buffer("feature_scale", torch.ones(features))
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, size=(3, 40)) * (rng.random((3, 40)) < 0.3)
    # Large β and expected uses on either side of the counts: lifts far above and below 1,
    # so the lookup's threshold check has work to do.
    effects = MainEffects(ContentModel(rng.normal(size=(40, features)).astype(np.float32),
                                     rng.normal(size=40).astype(np.float32)),
                          rng.gamma(0.5, 2.0, size=(3, 40)), smoothing=0.5, beta=3.0,
                          gamma=0.7) if with_effects else None
    return UserHashtagLookup(model.weights(), [f"tag{i}" for i in range(40)], ["ann", "bob", "cy"],
                             np.array([1.0, 10.0, 100.0]), counts.astype(float), effects)
