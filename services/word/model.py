"""Word2Vec over hashtags (Zhong et al. §3.1; InstaHash's hashtag word model).

Each post's hashtags form one sentence. A post's hashtags have no order, so each sentence
is permuted (seeded) ``permutations`` times, as InstaHash does, to let every pair of tags
fall inside a context window rather than only neighbours in the written order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from shared.artifacts import ArtifactReader, ArtifactWriter
from shared.embeddings import TermVectors
from shared.index import InnerProductIndex, l2_normalized
from shared.photos import PhotoSet, label_weights, log_prior, machine_labels, pmi_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Word2VecParams:
    """gensim's defaults except the dimension, which Zhong et al. fix at 256."""

    dim: int = 256
    window: int = 5
    min_count: int = 5
    negative: int = 5
    epochs: int = 5
    permutations: int = 1
    seed: int = 0
    # One thread: gensim's worker threads update the vectors in whatever order they run
    # (Hogwild), so two runs differ; with one, the same walks give the same bytes. A
    # Ray engine runs the fits side by side instead (commands/engine.py).
    workers: int = 1


def hashtag_sentences(documents: Sequence[Sequence[str]], permutations: int,
                      seed: int) -> list[list[str]]:
    """Each document ``permutations`` times, each copy in a random order (the first as written
    when permutations is 1)."""
    rng = np.random.default_rng(seed)
    sentences = []
    for document in documents:
        if not document:
            continue
        sentences.append(list(document))
        for _ in range(permutations - 1):
            sentences.append([document[i] for i in rng.permutation(len(document))])
    return sentences


def train_word2vec(documents: Sequence[Sequence[str]],
                   params: Word2VecParams = Word2VecParams()) -> TermVectors:
    """Skip-gram vectors for every term seen at least ``min_count`` times."""
    sentences = hashtag_sentences(documents, params.permutations, params.seed)
    if not sentences:
        raise ValueError("no non-empty document to train Word2Vec on")
    log.info("word2vec: %d sentences, %s", len(sentences), asdict(params))
    # imported here: gensim (with scipy.stats) costs a serving process ~0.9 s to import
    from gensim.models import Word2Vec

    model = Word2Vec(sentences, vector_size=params.dim, window=params.window,
                     min_count=params.min_count, negative=params.negative, sg=1,
                     epochs=params.epochs, seed=params.seed, workers=params.workers)
    terms = tuple(model.wv.index_to_key)
    if not terms:
        raise ValueError(f"no term occurs {params.min_count} times: nothing to embed")
    return TermVectors(terms, model.wv.vectors.astype(np.float32),
                       model.syn1neg.astype(np.float32))


@dataclass
class InstaHashMethod:
    """InstaHash's expansion (Ray et al.): the photo's machine labels, embedded by a Word2Vec
    model trained on sentences of hashtags + machine labels, select the hashtags they most
    predict:

        q(x) = Σ_{l ∈ L(x)} p(l | x) · w_l,    s(h | x) ∝ exp(q(x) · c_h + log P(h))
    """

    class_names: tuple[str, ...]
    params: Word2VecParams = Word2VecParams(dim=128, min_count=1, epochs=20, permutations=3)
    name: str = "word"
    term_vectors: TermVectors | None = None
    hashtag_context: np.ndarray | None = None
    prior: np.ndarray | None = None

    def fit(self, photos: PhotoSet, vocab: Sequence[str]) -> None:
        labels = machine_labels(photos.probabilities, self.class_names)
        sentences = [[vocab[i] for i in ids] + [term for term, _ in photo_labels]
                     for ids, photo_labels in zip(photos.hashtags, labels, strict=True)]
        self.term_vectors = train_word2vec(sentences, self.params)
        index = self.term_vectors.index
        context = np.zeros((len(vocab), self.term_vectors.dim), dtype=np.float32)
        for row, term in enumerate(vocab):
            if term in index:
                context[row] = self.term_vectors.context[index[term]]
        self.hashtag_context = context
        self.prior = log_prior(photos.hashtags, len(vocab))

    def queries(self, photos: PhotoSet) -> np.ndarray:
        index, vectors = self.term_vectors.index, self.term_vectors.vectors
        result = np.zeros((len(photos), self.term_vectors.dim), dtype=np.float32)
        for row, photo_labels in enumerate(machine_labels(photos.probabilities,
                                                          self.class_names)):
            for term_row, weight in label_weights(photo_labels, index):
                result[row] += weight * vectors[term_row]
        return result

    def scores(self, photos: PhotoSet) -> np.ndarray:
        return pmi_scores(self.queries(photos), self.hashtag_context, self.prior)

    def save(self, writer: ArtifactWriter, prefix: str | None = None) -> None:
        prefix = prefix or self.name
        writer.json(f"{prefix}/terms", list(self.term_vectors.terms))
        writer.array(f"{prefix}/vectors", self.term_vectors.vectors)
        writer.array(f"{prefix}/hashtag_context", self.hashtag_context)
        writer.array(f"{prefix}/prior", self.prior)

    @classmethod
    def load(cls, reader: ArtifactReader, class_names: tuple[str, ...],
             prefix: str = "word") -> InstaHashMethod:
        method = cls(class_names)
        method.term_vectors = TermVectors(tuple(reader.json(f"{prefix}/terms")),
                                          reader.array(f"{prefix}/vectors"))
        method.hashtag_context = reader.array(f"{prefix}/hashtag_context")
        method.prior = reader.array(f"{prefix}/prior")
        return method


class SimilarHashtags:
    """Nearest hashtags by cosine similarity of their word vectors: one exact FAISS
    inner-product search over the L2-normalised vectors of the vocabulary."""

    def __init__(self, term_vectors: TermVectors, vocabulary: Sequence[str]) -> None:
        index = term_vectors.index
        self.hashtags = tuple(term for term in vocabulary if term in index)
        self.rows = {term: row for row, term in enumerate(self.hashtags)}
        self.vectors = l2_normalized(term_vectors.vectors[[index[t] for t in self.hashtags]])
        self.index = InnerProductIndex(self.vectors)

    def __contains__(self, hashtag: str) -> bool:
        return hashtag in self.rows

    def search(self, hashtag: str, k: int) -> list[tuple[str, float]]:
        """The k nearest hashtags, the hashtag itself left out; KeyError when unknown."""
        query = self.vectors[self.rows[hashtag]][None, :]
        scores, ids = self.index.search(query, min(k + 1, len(self.hashtags)))
        return [(self.hashtags[i], float(score)) for score, i in zip(scores[0], ids[0],
                                                                      strict=True)
                if self.hashtags[i] != hashtag][:k]


class SimilarAcrossSpaces:
    """Nearest hashtags over several word spaces (one Word2Vec model per community of the
    served default): each space that knows the hashtag answers, and a neighbour keeps its
    best similarity. Communities tag in their own words, so no one space knows them all."""

    def __init__(self, spaces: Sequence[TermVectors], vocabulary: Sequence[str]) -> None:
        if not spaces:
            raise ValueError("no word space to search")
        self.spaces = [SimilarHashtags(space, vocabulary) for space in spaces]

    def __contains__(self, hashtag: str) -> bool:
        return any(hashtag in space for space in self.spaces)

    def search(self, hashtag: str, k: int) -> list[tuple[str, float]]:
        """The k nearest hashtags, the hashtag itself left out; KeyError when unknown."""
        best: dict[str, float] = {}
        for space in self.spaces:
            if hashtag in space:
                for neighbour, similarity in space.search(hashtag, k):
                    best[neighbour] = max(similarity, best.get(neighbour, -1.0))
        if not best and hashtag not in self:
            raise KeyError(hashtag)
        return sorted(best.items(), key=lambda item: (-item[1], item[0]))[:k]

