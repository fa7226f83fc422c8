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
from gensim.models import Word2Vec

from shared.embeddings import TermVectors

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
    workers: int = 2


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
    model = Word2Vec(sentences, vector_size=params.dim, window=params.window,
                     min_count=params.min_count, negative=params.negative, sg=1,
                     epochs=params.epochs, seed=params.seed, workers=params.workers)
    terms = tuple(model.wv.index_to_key)
    if not terms:
        raise ValueError(f"no term occurs {params.min_count} times: nothing to embed")
    return TermVectors(terms, model.wv.vectors.astype(np.float32))
