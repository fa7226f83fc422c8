"""InstaHash's AutoRec (Ray et al. §3.4–3.5, after Sedhain et al.'s AutoRec).

An autoencoder learns which words go together in a photo's description. Words are the
hashtag vocabulary and the machine-label terms. Each training photo is a profile of
ratings r ∈ R^|W|:

    r_w = +1                for its hashtags and its machine labels,
    r_w = 1 − n/(N+1)       for the n-th of the N words Word2Vec finds nearest to its
                            labels (the expansion: "a decaying rating", below +1),
    r_w = −1                for every other word ("the absence of a word means it does not
                            describe the image": without negatives the weights only grow).

    h = σ(V r + μ),   r̂ = W h + b,   loss = mean_w (r̂_w − r_w)² + λ (‖V‖² + ‖W‖²)

At recommendation time only the machine labels are given (+1 on them, 0 elsewhere), and
r̂ ranks the hashtags. Trained on whole profiles as the paper does, the network meets at
recommendation time an input unlike any it saw (a few +1s among zeros) and answers with
about the same ranking whatever the labels (tests/test_autorec.py measures it). The
``masked`` variant trains on the input it will get: each profile's hashtag part set to 0
(unknown), its description part (labels, expansion, −1 for absent labels) kept, the whole
profile as the target: a denoising autoencoder of the description.

InstaHash's recommendation is the intersection of AutoRec's and the
Word2Vec expansion's top lists, AutoRec's top 5 when it is empty (``intersection_scores``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.artifacts import ArtifactReader, ArtifactWriter
from shared.eval.metrics import top_k
from shared.photos import PhotoSet, machine_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoRecParams:
    hidden: int = 500
    epochs: int = 50  # the paper's, over HARRISON's 57k profiles
    #: at least this many updates: 50 epochs of a few hundred photos (~350 updates) leave
    #: the network at the prior (measured on MIRFlickr's labels: 37.0 R@5 with any photo's
    #: labels, against 67.9 with its own after 1,400 updates for the masked variant)
    min_updates: int = 1500
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5  # λ
    expansion: int = 10  # N: Word2Vec neighbours of the labels that get a decaying rating
    batch_size: int = 64
    seed: int = 0
    #: train on description-only inputs (module docstring) instead of whole profiles
    masked: bool = False


@dataclass(frozen=True)
class AutoRecWeights:
    """The trained network as arrays: h = σ(V r + μ), r̂ = W h + b. Scoring runs in numpy,
    so the word service never imports torch (autorec_train.py trains it)."""

    encode_weight: np.ndarray  # V: hidden × words
    encode_bias: np.ndarray  # μ
    decode_weight: np.ndarray  # W: words × hidden
    decode_bias: np.ndarray  # b

    #: the names in the artifact: torch's state_dict keys of the module that trained them
    KEYS = ("encode.weight", "encode.bias", "decode.weight", "decode.bias")

    @property
    def hidden(self) -> int:
        return self.encode_weight.shape[0]

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(zip(self.KEYS, (self.encode_weight, self.encode_bias,
                                    self.decode_weight, self.decode_bias), strict=True))

    def __call__(self, ratings: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # exp(−x) = inf far below 0: σ is 0
            hidden = 1.0 / (1.0 + np.exp(-(ratings @ self.encode_weight.T
                                             + self.encode_bias)))
        return hidden @ self.decode_weight.T + self.decode_bias


def rating_profiles(positives: Sequence[Sequence[int]], expansions: Sequence[Sequence[int]],
                    n_words: int) -> np.ndarray:
    """One row of ratings per photo (module docstring): +1 on ``positives`` (hashtags and
    labels), the decaying 1 − n/(N+1) on the n-th expansion word, −1 elsewhere."""
    ratings = -np.ones((len(positives), n_words), dtype=np.float32)
    for row, (words, expanded) in enumerate(zip(positives, expansions, strict=True)):
        for rank, word in enumerate(expanded, start=1):
            ratings[row, word] = max(ratings[row, word], 1.0 - rank / (len(expanded) + 1))
        ratings[row, list(words)] = 1.0
    return ratings


def recommend(model: AutoRecWeights, labels: Sequence[Sequence[int]], n_words: int,
              description: Sequence[Sequence[int]] | None = None,
              n_hashtags: int = 0) -> np.ndarray:
    """r̂ for each photo given only its machine labels: +1 on them, 0 elsewhere (the
    paper); with ``description`` (the masked variant), the input it was trained on: the
    labels' part as in training (+1 on the labels, the expansion's decaying ratings, −1 on
    the other label words), 0 on the hashtags."""
    if description is None:
        sparse = np.zeros((len(labels), n_words), dtype=np.float32)
        for row, words in enumerate(labels):
            sparse[row, list(words)] = 1.0
    else:
        sparse = rating_profiles(labels, description, n_words)
        sparse[:, :n_hashtags] = 0.0
    return model(sparse)


def intersection_scores(autorec: np.ndarray, word2vec: np.ndarray, depth: int = 20,
                        fallback: int = 5) -> np.ndarray:
    """InstaHash's rule as a ranking: hashtags in both AutoRec's and Word2Vec's top
    ``depth`` come first (by AutoRec's score), then, when the intersection is empty,
    AutoRec's top ``fallback``; the rest after them, by AutoRec's score. Non-negative."""
    low = autorec.min(axis=1, keepdims=True)
    span = np.maximum(autorec.max(axis=1, keepdims=True) - low, 1e-12)
    scores = (autorec - low) / span  # [0, 1] within each photo
    ours, theirs = top_k(autorec, depth), top_k(word2vec, depth)
    for row in range(len(autorec)):
        both = np.intersect1d(ours[row], theirs[row])
        chosen = both if len(both) else ours[row, :fallback]
        scores[row, chosen] += 1.0
    return scores


@dataclass
class AutoRecMethod:
    """AutoRec as a photo → hashtag method (module docstring). ``rule`` "autorec": r̂ of
    the hashtags given the photo's labels; "intersection": InstaHash's intersection with
    the Word2Vec expansion (``intersection_scores``). The word model (InstaHash's
    Word2Vec over hashtags + labels, services/word/model.py) is trained alongside."""

    class_names: tuple[str, ...]
    rule: str = "autorec"
    params: AutoRecParams = AutoRecParams()
    name: str = ""
    words: tuple[str, ...] = ()  # hashtags 0..V−1, then label terms
    n_hashtags: int = 0
    model: AutoRecWeights | None = None
    word_method: object | None = None  # InstaHashMethod
    # what scoring reads that no photo changes, built on first use (_word_rows, _unit_words)
    _rows: dict[str, int] | None = field(default=None, repr=False, compare=False)
    _unit: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False,
                                                        compare=False)

    def __post_init__(self) -> None:
        if self.rule not in ("autorec", "intersection"):
            raise ValueError(f"rule must be autorec or intersection, got {self.rule!r}")
        self.name = self.name or ("autorec" if self.rule == "autorec" else "instahash")

    def _word_rows(self) -> dict[str, int]:
        """Word → row, built once a fitted model (not on every call)."""
        if self._rows is None or len(self._rows) != len(self.words):
            self._rows = {word: row for row, word in enumerate(self.words)}
        return self._rows

    def _unit_words(self) -> tuple[np.ndarray, np.ndarray]:
        """(unit Word2Vec vector of each word, whether Word2Vec knows it), once a model."""
        if self._unit is None:
            vectors = self.word_method.term_vectors
            rows = np.array([vectors.index.get(word, -1) for word in self.words])
            known = rows >= 0
            unit = np.zeros((len(self.words), vectors.dim), np.float32)
            unit[known] = vectors.vectors[rows[known]]
            unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
            self._unit = (unit, known)
        return self._unit

    def _label_rows(self, photos: PhotoSet) -> list[list[int]]:
        rows = self._word_rows()
        return [[rows[term] for term, _ in labels if term in rows]
                for labels in machine_labels(photos.probabilities, self.class_names)]

    def fit(self, photos: PhotoSet, vocab: Sequence[str]) -> None:
        from services.word.model import InstaHashMethod

        self.word_method = InstaHashMethod(self.class_names)
        self.word_method.fit(photos, vocab)
        seen = sorted({term for labels in machine_labels(photos.probabilities,
                                                         self.class_names)
                       for term, _ in labels} - set(vocab))
        self.words, self.n_hashtags = (*vocab, *seen), len(vocab)
        self._rows = self._unit = None  # a new model: built again from it
        labels = self._label_rows(photos)
        expansions = self._expansions(photos, labels)
        positives = [[*ids, *label_ids] for ids, label_ids in
                     zip(photos.hashtags, labels, strict=True)]
        from services.word.autorec_train import train_autorec

        self.model = train_autorec(rating_profiles(positives, expansions, len(self.words)),
                                   self.params, self.n_hashtags)

    def _expansions(self, photos: PhotoSet, labels: list[list[int]]) -> list[list[int]]:
        """The N words (hashtags or labels) nearest to each photo's labels in Word2Vec,
        the labels themselves left out (none when N is 0)."""
        if self.params.expansion == 0:
            return [[] for _ in labels]
        unit, known = self._unit_words()
        queries = self.word_method.queries(photos)
        similarity = queries @ unit.T
        for row, label_ids in enumerate(labels):
            similarity[row, label_ids] = -np.inf
        similarity[:, ~known] = -np.inf
        return top_k(similarity, self.params.expansion).tolist()

    def scores(self, photos: PhotoSet) -> np.ndarray:
        labels = self._label_rows(photos)
        description = self._expansions(photos, labels) if self.params.masked else None
        predicted = recommend(self.model, labels, len(self.words), description,
                              self.n_hashtags)[:, :self.n_hashtags]
        if self.rule == "intersection":
            return intersection_scores(predicted, self.word_method.scores(photos))
        return np.clip((predicted + 1.0) / 2.0, 0.0, None)  # r̂ ∈ [−1, 1] → [0, 1]

    def save(self, writer: ArtifactWriter) -> None:
        writer.json(f"{self.name}/config", {"rule": self.rule, "words": list(self.words),
                                            "n_hashtags": self.n_hashtags,
                                            "masked": self.params.masked,
                                            "expansion": self.params.expansion,
                                            "hidden": self.model.hidden})
        for key, array in self.model.arrays().items():
            writer.array(f"{self.name}/{key}", array)
        self.word_method.save(writer, prefix=f"{self.name}/word")

    @classmethod
    def load(cls, reader: ArtifactReader, class_names: tuple[str, ...], name: str,
             ) -> AutoRecMethod:
        from services.word.model import InstaHashMethod

        config = reader.json(f"{name}/config")
        params = AutoRecParams(masked=config["masked"], expansion=config["expansion"])
        method = cls(class_names, rule=config["rule"], params=params, name=name,
                     words=tuple(config["words"]), n_hashtags=config["n_hashtags"])
        method.model = AutoRecWeights(*(reader.array(f"{name}/{key}")
                                        for key in AutoRecWeights.KEYS))
        method.word_method = InstaHashMethod.load(reader, class_names, prefix=f"{name}/word")
        return method
