"""Photo → hashtag candidate methods that need only the photo's features, and their fusion.

Each method is fit on training photos and returns, for new photos, a score per vocabulary
hashtag (n × V, higher is better, non-negative):

- ``FrequencyMethod``  s(h) = share of training photos tagged h (the same for every photo);
- ``KnnMethod``        visual kNN: the k training photos nearest by cosine of CNN features
                       vote for their hashtags, each vote weighted by its similarity:
                       s(h | x) = Σ_{j ∈ N_k(x)} cos(f_x, f_j) · [h ∈ H_j];
- ``MlpMethod``        HARRISON's baseline: a 2-layer multi-label classifier on CNN features,
                       s(h | x) = softmax(W₂ relu(W₁ f_x + b₁) + b₂)_h, trained with the
                       likelihood of the photo's hashtags (or HARRISON's sigmoid per hashtag);
- ``Fusion``           a weighted sum of the row-normalised scores (or of their logs),
                       weights fit on out-of-fold scores of the training photos.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import sparse

from shared.artifacts import ArtifactReader, ArtifactWriter
from shared.data.split import fit_sample
from shared.eval.metrics import recall_at_k, top_k
from shared.index import InnerProductIndex, l2_normalized, load_index, photo_index, save_index
from shared.photos import PhotoSet, hashtag_votes, sparse_hashtag_matrix

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class Method(Protocol):
    name: str

    def fit(self, photos: PhotoSet, vocab: Sequence[str]) -> None: ...

    def scores(self, photos: PhotoSet) -> np.ndarray: ...


def hashtag_matrix(hashtags: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    matrix = np.zeros((len(hashtags), vocab_size), dtype=np.float32)
    for row, ids in enumerate(hashtags):
        matrix[row, list(ids)] = 1.0
    return matrix


@dataclass
class FrequencyMethod:
    name: str = "frequency"
    prior: np.ndarray | None = None

    def fit(self, photos: PhotoSet, vocab: Sequence[str]) -> None:
        self.prior = hashtag_matrix(photos.hashtags, len(vocab)).mean(axis=0)

    def scores(self, photos: PhotoSet) -> np.ndarray:
        return np.tile(self.prior, (len(photos), 1))

    def save(self, writer: ArtifactWriter) -> None:
        writer.array(f"{self.name}/prior", self.prior)

    @classmethod
    def load(cls, reader: ArtifactReader) -> FrequencyMethod:
        return cls(prior=reader.array("frequency/prior"))


@dataclass
class KnnMethod:
    k: int = 20
    name: str = "knn"
    index: InnerProductIndex | None = None
    train_tags: sparse.csr_matrix | None = None  # training photos × hashtags
    #: the attribute holding its index of the training photos, which graph's and
    #: semantic's of the same photos equal (one serves the three: commands/train.py)
    photo_index_attribute = "index"

    def fit(self, photos: PhotoSet, vocab: Sequence[str]) -> None:
        self.index = photo_index(l2_normalized(photos.features))
        self.train_tags = sparse_hashtag_matrix(photos.hashtags, len(vocab))

    def neighbours(self, photos: PhotoSet) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(l2_normalized(photos.features), self.k)

    def save(self, writer: ArtifactWriter) -> None:
        save_index(writer, f"{self.name}/features", self.index)
        writer.array(f"{self.name}/tag_bounds", self.train_tags.indptr.astype(np.int64))
        writer.array(f"{self.name}/tag_ids", self.train_tags.indices.astype(np.int32))
        writer.json(f"{self.name}/config", {"k": self.k,
                                            "hashtags": int(self.train_tags.shape[1])})

    @classmethod
    def load(cls, reader: ArtifactReader) -> KnnMethod:
        config = reader.json("knn/config")
        method = cls(k=config["k"])
        method.index = load_index(reader, "knn/features")
        if reader.has("knn/tag_ids.npy"):
            ids, bounds = reader.array("knn/tag_ids"), reader.array("knn/tag_bounds")
            method.train_tags = sparse.csr_matrix(
                (np.ones(len(ids), np.float32), ids, bounds),
                shape=(len(bounds) - 1, config["hashtags"]))
        else:  # written before the tags were sparse: photos × hashtags, dense
            method.train_tags = sparse.csr_matrix(reader.array("knn/train_tags"))
        return method

    def scores(self, photos: PhotoSet) -> np.ndarray:
        similarity, ids = self.neighbours(photos)
        return hashtag_votes(np.clip(similarity, 0, None), ids, self.train_tags)


@dataclass
class MlpMethod:
    #: "sigmoid": HARRISON's cross-entropy per hashtag; "softmax": Veit's multi-class
    #: logistic loss, the photo's hashtags as one distribution; "auto": whichever ranks a
    #: held-out tenth of the training photos better. Neither wins everywhere
    #: (bench/mlp_loss.py, 4 splits each: softmax +5 R@5 on MIRFlickr's sparse tags, −1.7
    #: on the food set's, a tie on Instagram's).
    loss: str = "auto"
    hidden: int = 512
    dropout: float = 0.5
    weight_decay: float = 1e-4
    max_epochs: int = 200
    patience: int = 10
    seed: int = 0
    name: str = "mlp"
    #: W₁, b₁, W₂, b₂ as arrays: scoring runs in numpy, so a service that serves the MLP
    #: never imports torch (0.9 s and ~150 MB a process); torch trains it (``fit``)
    layers: tuple[np.ndarray, ...] | None = None
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    chosen_loss: str = ""

    def fit(self, photos: PhotoSet, vocab: Sequence[str]) -> None:
        """Adam on ``loss``, stopping when a held-out tenth of the photos stops improving;
        "auto": both losses, keeping the one whose network ranks the held-out tenth's
        hashtags better (R@5)."""
        if self.loss not in ("softmax", "sigmoid", "auto"):
            raise ValueError(f"loss must be softmax, sigmoid or auto, got {self.loss!r}")
        import torch

        generator = torch.Generator().manual_seed(self.seed)
        self.mean = photos.features.mean(axis=0)
        self.scale = photos.features.std(axis=0) + 1e-6
        inputs = torch.from_numpy(self._standardized(photos.features))
        order = torch.randperm(len(inputs), generator=generator)
        held_out, fit_rows = order[: max(1, len(order) // 10)], order[len(order) // 10:]
        truth = [frozenset(photos.hashtags[i]) for i in held_out.tolist()]
        best = None
        for loss in (("sigmoid", "softmax") if self.loss == "auto" else (self.loss,)):
            network = self._train(loss, inputs, photos.hashtags, len(vocab), fit_rows,
                                  held_out)
            with torch.no_grad():
                recall = recall_at_k(top_k(network(inputs[held_out]).numpy(), 5), truth, 5)
            if best is None or recall > best[0]:
                best = (recall, loss, network)
        recall, self.chosen_loss, network = best
        self.layers = tuple(tensor.numpy() for tensor in network.state_dict().values())
        log.info("mlp: %s loss (held-out R@5 %.1f)", self.chosen_loss, recall)

    def _train(self, loss: str, inputs: torch.Tensor, hashtags: Sequence[Sequence[int]],
               n_hashtags: int, fit_rows: torch.Tensor, held_out: torch.Tensor,
               ) -> torch.nn.Module:
        import torch

        from shared.losses import multiclass_log_loss, softmax_targets

        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        if loss == "softmax":
            targets, loss_fn = softmax_targets(hashtags, n_hashtags), multiclass_log_loss
        else:
            targets = torch.from_numpy(hashtag_matrix(hashtags, n_hashtags))
            loss_fn = torch.nn.BCEWithLogitsLoss()
        network = self._network(inputs.shape[1], n_hashtags)
        # fused: one kernel a step for all four tensors, the same losses to 4 places; the
        # default model's MLP fit on one thread 25.0 -> 20.2 s (`bench/fit_cost.py mlp`)
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-3, fused=True,
                                     weight_decay=self.weight_decay)
        best_loss, best_state, stale = float("inf"), None, 0
        epochs_run = 0
        for epochs_run in range(1, self.max_epochs + 1):  # noqa: B007 - logged below
            network.train()
            for batch in torch.randperm(len(fit_rows), generator=generator).split(128):
                rows = fit_rows[batch]
                optimizer.zero_grad()
                loss_fn(network(inputs[rows]), targets[rows]).backward()
                optimizer.step()
            network.eval()
            with torch.no_grad():
                value = loss_fn(network(inputs[held_out]), targets[held_out]).item()
            if value < best_loss - 1e-5:
                best_loss, stale = value, 0
                best_state = {k: v.clone() for k, v in network.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        network.load_state_dict(best_state)
        log.info("mlp (%s): %d epochs, held-out loss %.4f", loss, epochs_run, best_loss)
        return network.eval()

    def _network(self, n_inputs: int, n_outputs: int) -> torch.nn.Module:
        import torch

        return torch.nn.Sequential(
            torch.nn.Dropout(0.2), torch.nn.Linear(n_inputs, self.hidden),
            torch.nn.ReLU(), torch.nn.Dropout(self.dropout),
            torch.nn.Linear(self.hidden, n_outputs))

    #: the arrays' names in the artifact: torch's for the Sequential that trained them
    KEYS = ("1.weight", "1.bias", "4.weight", "4.bias")

    def save(self, writer: ArtifactWriter) -> None:
        for key, array in zip(self.KEYS, self.layers, strict=True):
            writer.array(f"{self.name}/{key}", array)
        writer.array(f"{self.name}/mean", self.mean)
        writer.array(f"{self.name}/scale", self.scale)
        writer.json(f"{self.name}/config", {"hidden": self.hidden, "dropout": self.dropout,
                                            "loss": self.chosen_loss, "keys": list(self.KEYS)})

    @classmethod
    def load(cls, reader: ArtifactReader) -> MlpMethod:
        config = reader.json("mlp/config")
        method = cls(hidden=config["hidden"], dropout=config["dropout"],
                     loss=config.get("loss", "sigmoid"))
        method.chosen_loss = method.loss
        method.layers = tuple(reader.array(f"mlp/{key}") for key in config["keys"])
        method.mean, method.scale = reader.array("mlp/mean"), reader.array("mlp/scale")
        return method

    def _standardized(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale).astype(np.float32)

    def scores(self, photos: PhotoSet) -> np.ndarray:
        """softmax (or sigmoid) of W₂ relu(W₁ x + b₁) + b₂, x the standardised features
        (dropout is training's alone)."""
        first, first_bias, last, last_bias = self.layers
        hidden = np.maximum(self._standardized(photos.features) @ first.T + first_bias, 0.0)
        logits = hidden @ last.T + last_bias
        if self.chosen_loss == "softmax":
            logits = np.exp(logits - logits.max(axis=1, keepdims=True))
            return logits / logits.sum(axis=1, keepdims=True)
        with np.errstate(over="ignore"):  # exp(−x) = inf far below 0: the score is 0
            return 1.0 / (1.0 + np.exp(-logits))


#: the gate's inverse regularisation C, the lowest validation log-loss of
#: bench/gate.py's grid (0.506 at 0.003 against 0.561 at the 0.01 used before it)
GATE_STRENGTH = 0.003


@dataclass
class CommunityGate:
    """P(c | x): which community of posters a photo looks like theirs, a multinomial
    logistic regression on the standardised CNN features (folded into the weights)."""

    weight: np.ndarray  # communities × d, on raw features
    bias: np.ndarray  # communities

    @classmethod
    def fit(cls, photos: PhotoSet, strength: float = GATE_STRENGTH) -> CommunityGate:
        """One gate per training set, computed once however many methods ask."""
        cached = _GATES.get((id(photos.features), strength))
        if cached is not None and cached[0]() is photos.features:
            return cached[1]
        from sklearn.linear_model import LogisticRegression

        n_communities = int(photos.communities.max()) + 1
        rows = fit_sample(len(photos), seed=0)  # a seeded sample of a large collection
        features, communities = photos.features[rows], photos.communities[rows]
        mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
        model = LogisticRegression(C=strength, max_iter=3000, class_weight="balanced")
        model.fit((features - mean) / scale, communities)
        weight = np.zeros((n_communities, photos.features.shape[1]))
        bias = np.zeros(n_communities)
        if len(model.classes_) == 2:  # sklearn's binary form: one row, for the second
            weight[model.classes_[1]], bias[model.classes_[1]] = model.coef_[0], \
                model.intercept_[0]
        else:
            weight[model.classes_], bias[model.classes_] = model.coef_, model.intercept_
        weight /= scale
        gate = cls(weight.astype(np.float32), (bias - weight @ mean).astype(np.float32))
        while len(_GATES) >= 8:  # the last few training sets: a fold's methods share one
            del _GATES[next(iter(_GATES))]
        _GATES[id(photos.features), strength] = (weakref.ref(photos.features), gate)
        return gate

    def __call__(self, features: np.ndarray) -> np.ndarray:
        logits = np.atleast_2d(features) @ self.weight.T + self.bias
        odds = np.exp(logits - logits.max(axis=1, keepdims=True))
        return odds / odds.sum(axis=1, keepdims=True)


#: (the training features' id, strength) → the gate fit on them
_GATES: dict[tuple[int, float], tuple[weakref.ref, CommunityGate]] = {}


@dataclass
class GatedMethod:
    """A method per community, mixed by the gate:

        s(h | x) = Σ_c P(c | x) ŝ_c(h | x),   ŝ_c: the method fit on community c's photos
                                              alone, its scores divided by their best

    Photo sets differ in how people tag (Instagram's #instagood, Flickr's camera names, a
    food site's dish names). One method over their union lets a photo's look-alikes from
    another community vote their conventions (a Flickr photo's nearest neighbours are
    often Instagram's); each community's own method answers in its own, and the gate says
    how much each applies. Gated frequency is the community prior Σ_c P(c | x) P̂(h | c)."""

    inner: list[Method]
    name: str = ""
    gate: CommunityGate | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.inner[0].name

    def fit(self, photos: PhotoSet, vocab: Sequence[str]) -> None:
        self.gate = CommunityGate.fit(photos)
        for community, method in enumerate(self.inner):
            rows = np.flatnonzero(photos.communities == community)
            if not len(rows):
                raise ValueError(f"{self.name}: no training photo of community {community}")
            method.fit(photos.subset(rows), vocab)

    def scores(self, photos: PhotoSet) -> np.ndarray:
        return self._mixed(photos, "scores")

    @property
    def extra(self) -> tuple[str, ...]:
        """Hashtags outside the vocabulary the inner methods score (the semantic
        method's): the same for every community, which share vocabulary and corpora."""
        extras = {tuple(getattr(method, "extra", ())) for method in self.inner}
        if len(extras) != 1:
            raise ValueError(f"{self.name}: communities score different outside hashtags")
        return next(iter(extras))

    def scores_all(self, photos: PhotoSet) -> np.ndarray:
        """The vocabulary's scores, then ``extra``'s (methods that have them)."""
        return self._mixed(photos, "scores_all")

    def mix(self, photos: PhotoSet) -> np.ndarray:
        """P(c | x, what the request knows) per photo: the gate's guess times the weights
        the photo came with (a named community's one-hot, or where its poster posts),
        renormalised (Bayes: the gate was fit with balanced classes, a flat prior); the
        gate's guess alone where none came."""
        weights = self.gate(photos.features)
        known = photos.community_weights
        if known is not None:
            if known.shape[1] != weights.shape[1]:
                raise ValueError(f"a community mix of {known.shape[1]} weights for a model "
                                 f"of {weights.shape[1]} communities")
            rows = ~np.isnan(known).any(axis=1)
            product = weights[rows] * known[rows]
            total = product.sum(axis=1, keepdims=True)
            # a gate sure of another community (its softmax underflowed): the prior alone
            weights[rows] = np.where(total > 1e-30, product / np.maximum(total, 1e-30),
                                     known[rows] / known[rows].sum(axis=1, keepdims=True))
        return weights

    def _mixed(self, photos: PhotoSet, how: str) -> np.ndarray:
        weights = self.mix(photos)
        # A method type may score every community at once (``joint_<how>``: the semantic
        # method, whose communities share the hashtag vectors); else one by one.
        joint = getattr(type(self.inner[0]), f"joint_{how}", None)
        parts = joint(self.inner, photos) if joint is not None else None
        if parts is None:
            parts = [getattr(method, how)(photos) for method in self.inner]
        total = None
        for community, scores in enumerate(parts):
            part = weights[:, community:community + 1] * normalized_rows(scores)
            total = part if total is None else total + part
        return total

    def save(self, writer: ArtifactWriter) -> None:
        scoped = writer.scoped(f"gated/{self.name}")
        scoped.array("gate_weight", self.gate.weight)
        scoped.array("gate_bias", self.gate.bias)
        for community, method in enumerate(self.inner):
            method.save(scoped.scoped(f"c{community}"))

    @classmethod
    def load(cls, reader: ArtifactReader, name: str,
             load_inner: Callable[[object], Method]) -> GatedMethod:
        scoped = reader.scoped(f"gated/{name}")
        gate = CommunityGate(scoped.array("gate_weight"), scoped.array("gate_bias"))
        inner = [load_inner(scoped.scoped(f"c{c}")) for c in range(len(gate.bias))]
        # Arrays the communities hold alike (the semantic method's text vectors) are kept
        # once: less memory, and one product can serve every community (``joint_*``).
        for attribute in getattr(type(inner[0]), "shared_arrays", ()):
            first = getattr(inner[0], attribute)
            for method in inner[1:]:
                if np.array_equal(getattr(method, attribute), first):
                    setattr(method, attribute, first)
        return cls(inner, name, gate)


def community_prior(posts: Mapping[str, float], communities: Sequence[str],
                    ) -> np.ndarray | None:
    """P(c | u) = (n_c + 1) / (n + C) over ``communities`` (the model's order) from a
    user's posts by community: add-one, so a community the user never posted to is
    unlikely, not impossible. None when none of their posts fell in these."""
    counts = np.array([posts.get(name, 0.0) for name in communities], dtype=np.float64)
    if len(communities) < 2 or counts.sum() <= 0:
        return None
    return ((counts + 1.0) / (counts.sum() + len(communities))).astype(np.float32)


def normalized_rows(scores: np.ndarray) -> np.ndarray:
    """Each photo's scores divided by its best score, so methods share one scale [0, 1]."""
    scores = np.clip(scores, 0, None)
    return scores / np.maximum(scores.max(axis=1, keepdims=True), 1e-12)


WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
FUSION_MODES = ("linear", "log")
_LOG_FLOOR = 1e-4


@dataclass
class Fusion:
    """A weighted combination of the methods' row-normalised scores ŝ_m ∈ [0, 1]:

    linear:  s(h | x) = Σ_m w_m ŝ_m(h | x)                 (a mixture of experts)
    log:     s(h | x) = Σ_m w_m log(ŝ_m(h | x) + 1e-4)     (a product of experts: a hashtag
                                                           must please every method)
    """

    weights: dict[str, float] = field(default_factory=dict)
    mode: str = "linear"

    def save(self, writer: ArtifactWriter) -> None:
        writer.json("fusion", {"weights": self.weights, "mode": self.mode})

    @classmethod
    def load(cls, reader: ArtifactReader) -> Fusion:
        saved = reader.json("fusion")
        if saved["mode"] not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {saved['mode']!r}")
        return cls(saved["weights"], saved["mode"])

    def combine(self, method_scores: dict[str, np.ndarray]) -> np.ndarray:
        """Methods missing from ``method_scores`` (a backend that did not answer) are left
        out: the rest still rank."""
        return self._weighted({name: self._part(scores) for name, scores
                               in method_scores.items() if self.weights.get(name)})

    def _part(self, scores: np.ndarray) -> np.ndarray:
        """ŝ_m, or log(ŝ_m + 1e-4) in log mode."""
        part = normalized_rows(scores)
        return np.log(part + _LOG_FLOOR) if self.mode == "log" else part

    def _weighted(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        total = None
        for name, weight in self.weights.items():
            if weight and name in parts:
                part = weight * parts[name]
                total = part if total is None else total + part
        if total is None:
            raise ValueError("no method with a fusion weight answered")
        return total

    @classmethod
    def fit(cls, method_scores: dict[str, np.ndarray], truth: Sequence[frozenset[int]],
            objective: Callable[[np.ndarray, Sequence[frozenset[int]]], float] | None = None,
            rounds: int = 3) -> Fusion:
        """Coordinate ascent over WEIGHT_GRID in each mode, maximising R@5 on the given
        (validation) photos; starts from the single best method. ``objective``: a mean
        over the photos (it is taken FEATURE_CHUNK photos at a time, the chunks' means
        averaged weighted by their sizes: a trial's fused scores and their ranking, 20 B
        a hashtag a photo and more for tied rows' full sorts, never exist for every photo
        at once)."""
        objective = objective or (lambda s, t: recall_at_k(top_k(s, 5), t, 5))
        n = len(truth)

        def mean_objective(scores_of: Callable[[slice], np.ndarray]) -> float:
            total = 0.0
            for start in range(0, n, FEATURE_CHUNK):
                rows = slice(start, min(start + FEATURE_CHUNK, n))
                total += objective(scores_of(rows), truth[rows]) * (rows.stop - rows.start)
            return total / n

        single = {name: mean_objective(lambda rows, s=scores: s[rows])
                  for name, scores in method_scores.items()}
        best_name = max(single, key=single.__getitem__)
        best_fusion = cls({name: float(name == best_name) for name in method_scores})
        best = single[best_name]
        for mode in FUSION_MODES:
            fusion = cls(best_fusion.weights if mode == "linear" else
                         {name: float(name == best_name) for name in method_scores}, mode)
            value, fusion = fusion._ascended(method_scores, mean_objective, rounds)
            if value > best + 1e-9:
                best, best_fusion = value, fusion
        log.info("fusion: single methods on validation R@5 %s -> %s weights %s, R@5 %.2f",
                 {k: round(v, 2) for k, v in single.items()}, best_fusion.mode,
                 best_fusion.weights, best)
        return best_fusion

    def _ascended(self, method_scores: dict[str, np.ndarray],
                  mean_objective: Callable[[Callable[[slice], np.ndarray]], float],
                  rounds: int) -> tuple[float, Fusion]:
        """(value, fusion): coordinate ascent from this fusion within its mode. Each
        method's part is made once (not once a trial: 252 trials) and goes when this
        returns, before the next mode makes its own."""
        parts = {name: self._part(scores) for name, scores in method_scores.items()}

        def value_of(trial: Fusion) -> float:
            return mean_objective(lambda rows: trial._weighted(
                {name: part[rows] for name, part in parts.items()}))

        fusion, value = self, value_of(self)
        for _, name in itertools.product(range(rounds), method_scores):
            for weight in WEIGHT_GRID:
                trial = type(self)({**fusion.weights, name: weight}, self.mode)
                if not any(trial.weights.values()):
                    continue
                trial_value = value_of(trial)
                if trial_value > value + 1e-9:
                    value, fusion = trial_value, trial
        return value, fusion


#: candidates a learned fusion ranks: the union of every method's top RANK_DEPTH
RANK_DEPTH = 50
#: photos whose candidates the learned fusion describes at once
FEATURE_CHUNK = 512


@dataclass
class RankFusion:
    """Learning to rank over each candidate hashtag's evidence (LambdaMART: LightGBM's
    lambdarank, optimising NDCG@5). A photo's candidates are the union of every method's
    top RANK_DEPTH hashtags; each candidate is described by, for every method, its score
    divided by the method's best for the photo and its rank, and by how many methods put
    it in their top 10. Trained on out-of-fold scores of the training photos, with early
    stopping on a fifth of them (by photo). Hashtags no method proposes rank below every
    candidate. The model is stored as LightGBM's own text format, never pickled."""

    methods: tuple[str, ...]
    booster: object = None  # lightgbm.Booster
    depth: int = RANK_DEPTH
    mode: str = "rank"

    @property
    def weights(self) -> dict[str, float]:
        """Each method's share of the model's total gain: what the ranker relies on."""
        gains = self.booster.feature_importance(importance_type="gain")
        names = self.booster.feature_name()
        total = float(gains.sum()) or 1.0
        return {m: round(float(sum(g for n, g in zip(names, gains, strict=True)
                                   if n.startswith(f"{m}_"))) / total, 3)
                for m in self.methods}

    def _features(self, method_scores: dict[str, np.ndarray],
                  ) -> tuple[list[np.ndarray], np.ndarray]:
        """(candidate hashtag ids of each photo, one feature row per candidate)."""
        missing = [m for m in self.methods if m not in method_scores]
        if missing:
            raise KeyError(f"the learned fusion needs every method; missing {missing}")
        scores = [np.asarray(method_scores[m], dtype=np.float32) for m in self.methods]
        candidates, rows = [], []
        # a few photos at a time: the working arrays below keep 8 B × methods × V a photo
        # (by arithmetic, 8 × 7 × 1,688 × 20,000 B = 1.9 GB for 20,000 photos), more while
        # each method's ranks are sorted; the features kept take 60 B a candidate
        for start in range(0, len(scores[0]), FEATURE_CHUNK):
            part_candidates, part_rows = self._chunk_features(
                [s[start:start + FEATURE_CHUNK] for s in scores])
            candidates += part_candidates
            rows.append(part_rows)
        return candidates, np.vstack(rows) if rows else np.zeros((0, 2 * len(scores) + 1))

    def _chunk_features(self, scores: list[np.ndarray],
                        ) -> tuple[list[np.ndarray], np.ndarray]:
        vocabulary = scores[0].shape[1]
        depth = min(self.depth, vocabulary)
        tops = np.concatenate([top_k(s, depth) for s in scores], axis=1)
        candidates = [np.unique(row) for row in tops]
        columns = []
        for method_rows in scores:
            normalized = normalized_rows(method_rows)
            ranks = np.empty_like(method_rows, dtype=np.float32)
            np.put_along_axis(ranks, np.argsort(-method_rows, axis=1, kind="stable"),
                              np.arange(1, vocabulary + 1, dtype=np.float32)[None, :],
                              axis=1)
            columns.append((normalized, np.minimum(ranks, self.depth + 1)))
        rows = []
        for row, ids in enumerate(candidates):
            per_method = [np.stack([normalized[row, ids], ranks[row, ids]], axis=1)
                          for normalized, ranks in columns]
            agreement = sum((ranks[row, ids] <= 10).astype(np.float32)
                            for _, ranks in columns)
            rows.append(np.hstack([*per_method, agreement[:, None]]))
        return candidates, np.vstack(rows) if rows else np.zeros((0, 2 * len(scores) + 1))

    def feature_names(self) -> list[str]:
        return [f"{m}_{kind}" for m in self.methods for kind in ("score", "rank")] \
            + ["agreement"]

    def combine(self, method_scores: dict[str, np.ndarray]) -> np.ndarray:
        """n × V: a candidate's score is the ranker's output, shifted so that every
        candidate scores above 0, the score of a hashtag no method proposes."""
        candidates, features = self._features(method_scores)
        n, vocabulary = np.asarray(method_scores[self.methods[0]]).shape
        predicted = self.booster.predict(features) if len(features) else np.zeros(0)
        result = np.zeros((n, vocabulary), dtype=np.float32)
        start = 0
        for row, ids in enumerate(candidates):
            part = predicted[start:start + len(ids)]
            start += len(ids)
            result[row, ids] = part - part.min() + 1.0
        return result

    @classmethod
    def fit(cls, method_scores: dict[str, np.ndarray], truth: Sequence[frozenset[int]],
            seed: int = 0, depth: int = RANK_DEPTH) -> RankFusion:
        import lightgbm

        fusion = cls(tuple(method_scores), depth=depth)
        candidates, features = fusion._features(method_scores)
        labels = np.concatenate([np.isin(ids, list(gold)).astype(np.float32)
                                 for ids, gold in zip(candidates, truth, strict=True)])
        sizes = np.array([len(ids) for ids in candidates])
        starts = np.concatenate([[0], np.cumsum(sizes)])
        validation = np.random.default_rng([seed, 13]).random(len(candidates)) < 0.2

        def part(mask: np.ndarray) -> lightgbm.Dataset:
            rows = np.concatenate([np.arange(starts[i], starts[i + 1])
                                   for i in np.flatnonzero(mask)])
            return lightgbm.Dataset(features[rows], labels[rows], group=sizes[mask],
                                    feature_name=fusion.feature_names(),
                                    free_raw_data=False)

        train, valid = part(~validation), part(validation)
        params = {"objective": "lambdarank", "metric": "ndcg", "ndcg_eval_at": [5],
                  "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 50,
                  "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 1,
                  "lambda_l2": 1.0, "seed": seed, "deterministic": True,
                  "num_threads": 2, "verbosity": -1}
        fusion.booster = lightgbm.train(
            params, train, num_boost_round=500, valid_sets=[valid],
            callbacks=[lightgbm.early_stopping(30, verbose=False)])
        log.info("learned fusion: %d photos, %d candidates, %d trees (best NDCG@5 on the "
                 "held-out fifth %.4f); gain shares %s", len(candidates), len(labels),
                 fusion.booster.best_iteration,
                 fusion.booster.best_score["valid_0"]["ndcg@5"], fusion.weights)
        return fusion

    def save(self, writer: ArtifactWriter) -> None:
        writer.json("fusion_rank", {"methods": list(self.methods), "depth": self.depth,
                                    "model": self.booster.model_to_string(
                                        num_iteration=self.booster.best_iteration or None)})

    @classmethod
    def load(cls, reader: ArtifactReader) -> RankFusion:
        import lightgbm

        saved = reader.json("fusion_rank")
        return cls(tuple(saved["methods"]), lightgbm.Booster(model_str=saved["model"]),
                   saved["depth"])


def outside_candidates(per_method: dict[str, np.ndarray],
                       outside: dict[str, tuple[Sequence[str], np.ndarray]],
                       fused: np.ndarray, vocabulary_index: dict[str, int],
                       depth: int = 100, neighbours: int = 5,
                       ) -> tuple[tuple[str, ...], np.ndarray]:
    """Hashtags outside the vocabulary that a method scored (the semantic method's, from
    tag-only corpora), each placed on the fused scale: it takes (just under) the median
    fused score of the ``neighbours`` vocabulary hashtags whose scores from that method
    are closest to its own. No fusion weight exists for a hashtag no other method knows;
    where the method's similar scores land in the fused ranking says how far to trust it
    (placing it by the method's rank alone put a weak method's guesses in the top 5:
    MIRFlickr's held-out R@5 fell from 13.9 to 10.6). Only those that would reach the
    top ``depth`` are kept; a term two methods propose keeps its best."""
    ranked_fused = np.sort(fused)[::-1]
    best: dict[str, float] = {}
    for method, (terms, scores) in outside.items():
        inside = per_method.get(method)
        if inside is None or not len(terms) or not len(inside):
            continue
        order = np.argsort(inside, kind="stable")
        sorted_scores, sorted_fused = inside[order], fused[order]
        scores = np.asarray(scores, dtype=np.float64)
        k = min(neighbours, len(sorted_scores))
        # The k closest lie among the k on either side of where the score would go.
        at = np.searchsorted(sorted_scores, scores)
        window = np.clip(at[:, None] + np.arange(-k, k)[None, :], 0, len(sorted_scores) - 1)
        distance = np.abs(sorted_scores[window] - scores[:, None])
        nearest = np.take_along_axis(window, np.argsort(distance, axis=1, kind="stable")
                                     [:, :k], axis=1)
        places = np.median(sorted_fused[nearest], axis=1).astype(np.float32)
        values = np.nextafter(places, np.float32(-np.inf))
        reach = np.searchsorted(-ranked_fused, -values.astype(np.float64), side="left")
        for term, value, rank in zip(terms, values.tolist(), reach, strict=True):
            if rank < depth and term not in vocabulary_index:
                best[term] = max(best.get(term, -np.inf), value)
    terms = tuple(sorted(best, key=best.get, reverse=True))
    return terms, np.array([best[t] for t in terms], dtype=np.float32)
