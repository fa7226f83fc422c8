"""The tensor model's settings and, once trained, its parameters as arrays: what the user
service serves from. Torch trains the model (model.py); serving reads these in numpy, so
the user service never loads torch (0.9 s and ~150 MB a process)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorParams:
    hashtag_dim: int = 300  # D
    photo_dim: int = 300  # F
    user_dim: int = 50  # E
    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    margin: float = 1.0
    #: "ranking": Veit's hinge loss with in-batch negatives (§3.2); "softmax": the
    #: likelihood of each post's hashtags under a softmax over the whole vocabulary
    loss: str = "softmax"
    #: with validation: stop after this many epochs without a better one
    patience: int = 5
    seed: int = 0


#: the parameters' names in the artifact: the trained module's state_dict keys
ARRAYS = ("hashtags.weight", "users.weight", "project.weight", "project.bias", "core",
          "feature_mean", "feature_scale")


@dataclass(frozen=True, eq=False)
class TensorWeights:
    """h_i (``hashtags``, V × D), u_k (``users``, U × E), the projection P (F × d) with its
    bias, the core W (E × D × F), the feature standardisation, and ū (``mean_user``: the
    user averaged out)."""

    params: TensorParams
    arrays: dict[str, np.ndarray]
    mean_user: np.ndarray

    def __post_init__(self) -> None:
        missing = [name for name in ARRAYS if name not in self.arrays]
        if missing:
            raise ValueError(f"the tensor model lacks {', '.join(missing)}")
