"""The semantic method: any hashtag, also one never seen with a photo, scored by how close
its words are to the photo's machine labels and to its visual neighbours' hashtags, in a
sentence-embedding space (all-MiniLM-L6-v2, shared/text.py), calibrated by its prior.

    e_h = E(words of h)          (the segmented hashtag: "foodporn" → "food porn")
    e_c = E(ImageNet class name c)
    q_L(x) = Σ_{c ∈ top 5(x)} p(c | x) e_c                 (normalised)
    q_N(x) = Σ_{j ∈ N_k(x)} cos(f_x, f_j) Σ_{g ∈ H_j} e_g  (normalised)
    s(h | x) = σ(a · e_hᵀ q_L + b · e_hᵀ q_N + c · log P(h) + d)

(a, b, c, d) come from a logistic regression on the training photos (a seeded sample of
HASHREC_FIT_SAMPLE of them when there are more): each photo against every vocabulary
hashtag, its neighbours found among all the other training photos, so its own hashtags
never vote for themselves. Hashtags outside the photo vocabulary (``extra``:
hashtags of tag-only corpora, such as HARRISON's lists) take the same weights; their prior
is their share in those corpora, brought to the photo vocabulary's scale by the median
ratio of the two priors over the hashtags both know.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import sparse

from shared.artifacts import ArtifactReader, ArtifactWriter
from shared.data.split import fit_sample
from shared.index import InnerProductIndex, l2_normalized, load_index, photo_index, save_index
from shared.photos import PhotoSet, hashtag_votes, log_prior, sparse_hashtag_matrix

log = logging.getLogger(__name__)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


@dataclass
class TextResources:
    """What the semantic method reads at training time: a way to embed hashtags (already
    segmented) and class names, and hashtags of tag-only corpora with their counts."""

    embed: object  # Callable[[Sequence[str]], np.ndarray]: texts → unit vectors
    segment: object  # Callable[[str], str]: hashtag → its words
    corpus_counts: dict[str, int] = field(default_factory=dict)
    corpus_total: int = 0
    #: the text encoder's id (shared/text.py), kept in the model's manifest
    model_id: str = ""


@dataclass
class SemanticMethod:
    class_names: tuple[str, ...]
    resources: TextResources | None = None
    neighbours: int = 20
    max_extra: int = 5000
    name: str = "semantic"
    weights: np.ndarray | None = None  # a, b, c, d
    hashtag_vectors: np.ndarray | None = None  # (V + E) × 384: vocabulary, then extra
    class_vectors: np.ndarray | None = None  # 1000 × 384
    priors: np.ndarray | None = None  # log P(h), V + E
    extra: tuple[str, ...] = ()
    n_vocabulary: int = 0
    visual_index: InnerProductIndex | None = None
    photo_index_attribute = "visual_index"  # KnnMethod's
    #: training photos × vocabulary hashtags, sparse: H_j, whose text Σ_{g ∈ H_j} e_g a
    #: neighbour j adds to q_N (computed at query time: 40 B a photo, not 1.5 KB)
    train_tags: sparse.csr_matrix | None = None
    neighbour_text: np.ndarray | None = None  # models written before: Σ_{g ∈ H_j} e_g

    def fit(self, photos: PhotoSet, vocab: Sequence[str]) -> None:
        if self.resources is None:
            raise ValueError("the semantic method needs TextResources to train")
        vocab = list(vocab)
        self.n_vocabulary = len(vocab)
        self.extra, self.hashtag_vectors, self.class_vectors = self.texts(vocab)
        vocabulary_prior = log_prior(photos.hashtags, len(vocab)).astype(np.float64)
        self.priors = np.concatenate([vocabulary_prior, self._extra_prior(vocab,
                                                                          vocabulary_prior)])
        self.visual_index = photo_index(l2_normalized(photos.features))
        self.train_tags = sparse_hashtag_matrix(photos.hashtags, len(vocab))
        # a, b, c, d are fit on a seeded sample of the photos (HASHREC_FIT_SAMPLE, all
        # of them up to it): over every photo the regression's inputs are 3 × photos × V
        # values (at 100,000 photos a worker went past 10 GB and was killed)
        rows = fit_sample(len(photos), 0)
        label_part, neighbour_part = self._similarities(photos.subset(rows),
                                                        exclude_self=True, columns=len(vocab))
        self.weights = self._fit_weights(label_part, neighbour_part, vocabulary_prior,
                                         [photos.hashtags[row] for row in rows])
        log.info("semantic: %d vocabulary + %d corpus hashtags; weights labels %.2f, "
                 "neighbours %.2f, prior %.2f, bias %.2f", len(vocab), len(self.extra),
                 *self.weights)

    def texts(self, vocab: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        """(the corpus hashtags outside ``vocab`` it scores too, the text vectors of the
        vocabulary then those, the class names' text vectors): what the fit embeds. A
        training driver calls it once before its fits, so the text store has every vector
        before parallel fits would each compute the missing ones."""
        resources = self.resources
        known = set(vocab)
        extra = tuple(sorted((t for t in resources.corpus_counts if t not in known),
                             key=lambda t: -resources.corpus_counts[t])[:self.max_extra])
        hashtags = resources.embed([resources.segment(t) for t in [*vocab, *extra]])
        return extra, hashtags, resources.embed(list(self.class_names))

    def _extra_prior(self, vocab: list[str], vocabulary_prior: np.ndarray) -> np.ndarray:
        counts, total = self.resources.corpus_counts, max(self.resources.corpus_total, 1)
        shared = [(row, counts[t]) for row, t in enumerate(vocab) if counts.get(t)]
        shift = float(np.median([vocabulary_prior[row] - np.log(count / total)
                                 for row, count in shared])) if shared else 0.0
        return np.array([np.log(counts[t] / total) + shift for t in self.extra])

    def _label_queries(self, photos: PhotoSet) -> np.ndarray:
        """q_L: the photo's top labels' text vectors, weighted by their probabilities."""
        top = np.argsort(-photos.probabilities, axis=1)[:, :5]
        weights = np.take_along_axis(photos.probabilities, top, axis=1)
        return _unit(np.einsum("nk,nkd->nd", weights, self.class_vectors[top]))

    def _neighbour_queries(self, photos: PhotoSet, exclude_self: bool = False) -> np.ndarray:
        """q_N: the text of the photo's visual neighbours' hashtags, by similarity."""
        depth = self.neighbours + int(exclude_self)
        similarity, ids = self.visual_index.search(l2_normalized(photos.features), depth)
        if exclude_self:  # a training photo's own hashtags must not vote for themselves
            similarity, ids = similarity[:, 1:], ids[:, 1:]
        weights = np.clip(similarity, 0, None)
        if self.train_tags is None:  # a model written before the tags were kept sparse
            return _unit(np.einsum("nk,nkd->nd", weights, self.neighbour_text[ids]))
        # Σ_j w_j Σ_{g ∈ H_j} e_g = (Σ_j w_j [g ∈ H_j])_g · E
        votes = hashtag_votes(weights, ids, self.train_tags)
        return _unit(votes @ self.hashtag_vectors[:self.train_tags.shape[1]])

    def _similarities(self, photos: PhotoSet, exclude_self: bool = False,
                      columns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(e_hᵀ q_L, e_hᵀ q_N) for every photo and hashtag (the first ``columns``)."""
        hashtags = self.hashtag_vectors[:columns]
        return (self._label_queries(photos) @ hashtags.T,
                self._neighbour_queries(photos, exclude_self) @ hashtags.T)

    def _sigmoid(self, label_part: np.ndarray, neighbour_part: np.ndarray) -> np.ndarray:
        a, b, c, d = self.weights
        logits = a * label_part + b * neighbour_part + c * self.priors + d
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    #: the arrays communities' methods can hold as one (GatedMethod.load shares them)
    shared_arrays = ("hashtag_vectors", "class_vectors")

    @staticmethod
    def joint_scores_all(methods: Sequence[SemanticMethod], photos: PhotoSet,
                         ) -> list[np.ndarray] | None:
        """Each method's ``scores_all`` for methods that hold one set of hashtag and class
        vectors (a gated model's communities): the label query, the same for all, and
        each community's neighbour query meet the hashtag vectors in one product, one
        pass over the largest matrix instead of two a community. None when the methods
        hold different vectors."""
        first = methods[0]
        if any(m.hashtag_vectors is not first.hashtag_vectors
               or m.class_vectors is not first.class_vectors for m in methods):
            return None
        n = len(photos)
        queries = np.concatenate([first._label_queries(photos),
                                  *(m._neighbour_queries(photos) for m in methods)])
        products = queries @ first.hashtag_vectors.T
        return [m._sigmoid(products[:n], products[n * (c + 1):n * (c + 2)])
                for c, m in enumerate(methods)]

    @staticmethod
    def joint_scores(methods: Sequence[SemanticMethod], photos: PhotoSet,
                     ) -> list[np.ndarray] | None:
        joint = SemanticMethod.joint_scores_all(methods, photos)
        return None if joint is None else [
            scores[:, :m.n_vocabulary] for m, scores in zip(methods, joint, strict=True)]

    @staticmethod
    def _fit_weights(label_part: np.ndarray, neighbour_part: np.ndarray,
                     prior: np.ndarray, hashtags: Sequence[Sequence[int]]) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression

        truth = np.zeros(label_part.shape, dtype=bool)
        for row, ids in enumerate(hashtags):
            truth[row, list(ids)] = True
        inputs = np.stack([label_part.ravel(), neighbour_part.ravel(),
                           np.broadcast_to(prior, label_part.shape).ravel()], axis=1)
        model = LogisticRegression(C=1.0, max_iter=1000).fit(inputs, truth.ravel())
        return np.array([*model.coef_[0], model.intercept_[0]])

    def scores_all(self, photos: PhotoSet) -> np.ndarray:
        """s(h | x) for the vocabulary, then the extra hashtags (n × (V + E))."""
        return self._sigmoid(*self._similarities(photos))

    def scores(self, photos: PhotoSet) -> np.ndarray:
        return self.scores_all(photos)[:, :self.n_vocabulary]

    def save(self, writer: ArtifactWriter) -> None:
        writer.json(f"{self.name}/config", {"neighbours": self.neighbours,
                                            "extra": list(self.extra),
                                            "n_vocabulary": self.n_vocabulary})
        for name in ("weights", "hashtag_vectors", "class_vectors", "priors"):
            writer.array(f"{self.name}/{name}", getattr(self, name))
        writer.array(f"{self.name}/tag_bounds", self.train_tags.indptr.astype(np.int64))
        writer.array(f"{self.name}/tag_ids", self.train_tags.indices.astype(np.int32))
        save_index(writer, f"{self.name}/visual_features", self.visual_index)

    @classmethod
    def load(cls, reader: ArtifactReader, class_names: tuple[str, ...]) -> SemanticMethod:
        config = reader.json("semantic/config")
        method = cls(class_names, neighbours=config["neighbours"],
                     extra=tuple(config["extra"]), n_vocabulary=config["n_vocabulary"])
        for name in ("weights", "hashtag_vectors", "class_vectors", "priors"):
            setattr(method, name, reader.array(f"semantic/{name}"))
        if reader.has("semantic/tag_ids.npy"):
            ids, bounds = reader.array("semantic/tag_ids"), reader.array("semantic/tag_bounds")
            method.train_tags = sparse.csr_matrix(
                (np.ones(len(ids), np.float32), ids, bounds),
                shape=(len(bounds) - 1, method.n_vocabulary))
        else:
            method.neighbour_text = reader.array("semantic/neighbour_text")
        method.visual_index = load_index(reader, "semantic/visual_features")
        return method


def text_resources(corpora: Sequence[Sequence[str]] = (), segmenter_text: Sequence[str] = (),
                   min_count: int = 10, store_dir: Path | None = None) -> TextResources:
    """The semantic method's inputs: hashtags segmented by a HashtagSegmenter over
    ``segmenter_text`` and embedded through the text store in ``store_dir`` (default
    $HASHREC_MODELS/text-features); the hashtag lists of ``corpora`` counted (terms seen
    ``min_count`` times)."""
    from collections import Counter

    from shared.config import models_dir
    from shared.text import HashtagSegmenter, TextStore

    segmenter = HashtagSegmenter(segmenter_text)
    store = TextStore(store_dir or models_dir() / "text-features")
    counts = Counter(term for hashtags in corpora for term in hashtags)
    kept = {term: count for term, count in counts.items() if count >= min_count}
    return TextResources(lambda texts: store.encode(texts, progress=False),
                         segmenter.segment, kept, sum(counts.values()), store.model_id)
