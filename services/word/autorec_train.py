"""AutoRec's training (services/word/autorec.py has the model and the method): torch, so
that only a training process imports it."""

from __future__ import annotations

import logging

import numpy as np
import torch

from services.word.autorec import AutoRecParams, AutoRecWeights

log = logging.getLogger(__name__)


class AutoRec(torch.nn.Module):
    def __init__(self, n_words: int, hidden: int) -> None:
        super().__init__()
        self.encode = torch.nn.Linear(n_words, hidden)  # V, μ
        self.decode = torch.nn.Linear(hidden, n_words)  # W, b

    def forward(self, ratings: torch.Tensor) -> torch.Tensor:
        return self.decode(torch.sigmoid(self.encode(ratings)))


def autorec_loss(model: torch.nn.Module, ratings: torch.Tensor, weight_decay: float,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
    """mean over entries of (r̂ − r)², every entry observed (the negatives included), plus
    λ (‖V‖² + ‖W‖²); ``targets`` (default: the input) for a masked input."""
    targets = ratings if targets is None else targets
    error = ((model(ratings) - targets) ** 2).mean()
    if not weight_decay:  # training's λ is the optimizer's (train_autorec)
        return error
    return error + weight_decay * (model.encode.weight.pow(2).sum()
                                   + model.decode.weight.pow(2).sum())


def train_autorec(ratings: np.ndarray, params: AutoRecParams | None = None,
                  n_hashtags: int = 0) -> AutoRecWeights:
    """Adam on ``autorec_loss`` for ``params.epochs`` passes (at least ``min_updates``
    updates); logs the RMSE (the paper reports 0.28 after 50 epochs). ``params.masked``:
    the first ``n_hashtags`` words of every input are zeroed (the targets keep them).

    A zeroed input column never reaches the hidden layer, so the encoder's columns for
    the hashtags get no gradient but λ's, which only shrinks them: the masked network is
    trained over the description's columns alone (the same outputs, for the 1,688 + ~400
    words of the default model about a fifth of the encoder's work), and those columns are
    stored as 0."""
    params = params or AutoRecParams()
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    data = torch.from_numpy(np.asarray(ratings, dtype=np.float32))
    model = AutoRec(data.shape[1], params.hidden)
    skipped = n_hashtags if params.masked else 0
    inputs = data[:, skipped:]
    encoder = torch.nn.Linear(inputs.shape[1], params.hidden)  # V's kept columns, μ
    with torch.no_grad():
        encoder.weight.copy_(model.encode.weight[:, skipped:])
        encoder.bias.copy_(model.encode.bias)
    trained = torch.nn.Sequential(encoder, torch.nn.Sigmoid(), model.decode)  # W σ(V r + μ) + b
    # λ's gradient 2λV (2λW) is Adam's L2 term (weight_decay, not AdamW's decoupled one):
    # the same step without a pass over each matrix for its square and another back.
    # fused: one pass over the ~2 M parameters a step, 4× faster than the default on CPU.
    optimizer = torch.optim.Adam(
        [{"params": [encoder.weight, model.decode.weight],
          "weight_decay": 2 * params.weight_decay},
         {"params": [encoder.bias, model.decode.bias]}],
        lr=params.learning_rate, fused=True)
    batches = -(-len(data) // params.batch_size)
    epochs = max(params.epochs, -(-params.min_updates // batches))
    for _ in range(epochs):
        for batch in torch.randperm(len(data), generator=generator).split(params.batch_size):
            optimizer.zero_grad()
            autorec_loss(trained, inputs[batch], 0.0, targets=data[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        rmse = float(((trained(inputs) - data) ** 2).mean().sqrt())
        model.encode.weight.zero_()
        model.encode.weight[:, skipped:] = encoder.weight
        model.encode.bias.copy_(encoder.bias)
    log.info("autorec: %d profiles x %d words, RMSE %.3f after %d epochs", *data.shape, rmse,
             epochs)
    return weights_of(model)


def weights_of(model: AutoRec) -> AutoRecWeights:
    """The module's parameters as the arrays scoring reads."""
    state = model.state_dict()
    return AutoRecWeights(*(state[key].detach().numpy().copy() for key in AutoRecWeights.KEYS))


