"""The served model measured the way a user meets it: photos it never saw, each answered
by the model as served, its top hashtags compared with the poster's own.

For each photo set: the test photos are the seeded 20 % the model held out when trained
with ``--hold-out`` (the split ``evaluate image2tag`` makes of that set), or every photo of
a set it never trained on; a set it trained on in full is refused. Each photo is answered
in process by the artifact (every method and the fusion the recommender uses) or, with a
target, by a running RecommenderService over gRPC. Two truths:

- ``set vocabulary``: the poster's hashtags among those seen 3 times in that set's training
  photos (at most 1,000), the collection artefacts removed: exactly `evaluate image2tag`'s,
  so the two tables compare;
- ``all tags``: every one of the poster's hashtags (R@5 is then bounded by 5 / #tags).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.data.normalize import Vocabulary
from shared.data.readers import Post
from shared.eval.metrics import accuracy_at_k, precision_at_k, recall_at_k

log = logging.getLogger(__name__)

#: ranked hashtags (best first) for each photo path
Answer = Callable[[Sequence[Post]], list[list[str]]]


@dataclass
class ServedResult:
    photos: int
    vocabulary: int
    results: dict[str, dict[str, float]]  # truth → metric → percent


def ranked_metrics(ranked: Sequence[Sequence[str]], truth: Sequence[set[str]],
                   ) -> dict[str, float]:
    """P@1, R@5, A@5, A@1, A@10 of hashtag lists against hashtag sets (percent)."""
    index: dict[str, int] = {}
    rows = [[index.setdefault(t, len(index)) for t in row] for row in ranked]
    gold = [{index.setdefault(t, len(index)) for t in row} for row in truth]
    return {"P@1": precision_at_k(rows, gold, 1), "R@5": recall_at_k(rows, gold, 5),
            "A@5": accuracy_at_k(rows, gold, 5), "A@1": accuracy_at_k(rows, gold, 1),
            "A@10": accuracy_at_k(rows, gold, 10)}


def evaluate_served(train: Sequence[Post], test: Sequence[Post], answer: Answer,
                    ignore: frozenset[str] = frozenset(), min_count: int = 3,
                    max_vocab: int = 1000) -> ServedResult:
    """``train``: the set's training posts (only for its vocabulary); ``test``: the posts
    to answer (those with a photo)."""
    train_tags = [[t for t in p.hashtags if t not in ignore]
                  for p in train if p.image is not None]
    vocabulary = Vocabulary.build(train_tags, min_count, max_vocab)
    photos = [p for p in test if p.image is not None]
    ranked = answer(photos)
    results = {}
    for name, keep in (("set vocabulary", lambda t: t in vocabulary.index),
                       ("all tags", lambda t: True)):
        rows = [(r, {t for t in p.hashtags if t not in ignore and keep(t)})
                for r, p in zip(ranked, photos, strict=True)]
        rows = [(r, gold) for r, gold in rows if gold]
        if rows:
            results[name] = {k: round(v, 2) for k, v in ranked_metrics(
                [r for r, _ in rows], [gold for _, gold in rows]).items()}
            results[name]["photos"] = len(rows)
    return ServedResult(len(photos), len(vocabulary), results)


def in_process_answer(models: object, store: object, k: int = 10,
                      with_outside: bool = True, community: str = "",
                      posters: Mapping[Path, np.ndarray] | None = None) -> Answer:
    """Answers from the artifact itself: the methods and the fusion the recommender
    serves, hashtags outside the vocabulary placed as the recommender places them (with
    ``with_outside``; without, the vocabulary alone: what the outside hashtags cost or add).
    ``community``: every photo posted to that community (RecommendRequest.community), not
    the gate's guess. ``posters``: photo → where its poster posts (P(c | u)), which
    weights the gate's guess as the recommender weights it for a known user."""
    from services.recommender.model import outside_candidates
    from shared.eval.metrics import top_k

    index = {term: row for row, term in enumerate(models.vocabulary)}

    def answer(posts: Sequence[Post]) -> list[list[str]]:
        from commands.experiments.photos import readable_photos

        kept, photos = readable_photos(posts, store, progress=False)
        if len(kept) != len(posts):
            raise ValueError(f"{len(posts) - len(kept)} test photos could not be read")
        if posters is not None and not community:
            unknown = np.full(len(models.communities), np.nan, np.float32)
            photos = photos.routed(np.stack([posters.get(p.image.resolve(), unknown)
                                             for p in posts]))
        fused, per_method = models.scores(photos, community)
        if not with_outside:
            return [[models.vocabulary[i] for i in row] for row in top_k(fused, k)]
        if community:  # the outside hashtags scored as the recommender scores them
            photos = photos.routed(models.community_mix(community))
        outside_all = {name: (method.extra,
                              method.scores_all(photos)[:, len(models.vocabulary):])
                       for name, method in models.methods.items()
                       if getattr(method, "extra", ())}
        ranked = []
        for row in range(len(posts)):
            outside = {name: (terms, scores[row])
                       for name, (terms, scores) in outside_all.items()}
            scores = {m: s[row] for m, s in per_method.items()}
            terms, extra = outside_candidates(scores, outside, fused[row], index)
            every = np.concatenate([fused[row], extra])
            names = (*models.vocabulary, *terms)
            ranked.append([names[i] for i in top_k(every[None, :], k)[0]])
        return ranked

    return answer


def grpc_answer(target: str, k: int = 10, timeout: float = 60.0,
                community: str = "") -> Answer:
    """Answers from a running RecommenderService: the photo's bytes, no user; posted to
    ``community`` when given."""
    from hashrec.v1 import recommender_pb2, recommender_pb2_grpc

    from shared.grpc_server import blocking_channel

    def answer(posts: Sequence[Post]) -> list[list[str]]:
        with blocking_channel(target) as channel:
            stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
            return [[h.hashtag for h in stub.Recommend(recommender_pb2.RecommendRequest(
                image=p.image.read_bytes(), k=k, community=community),
                timeout=timeout).hashtags] for p in posts]

    return answer


def poster_priors(models: object, store: object, photos: Sequence[Post],
                  simulated: Sequence[Post]) -> dict[Path, np.ndarray]:
    """For each photo of ``photos`` that a simulated user posted (the first such post in
    the simulation, which lists each user's posts in time order): P(c | u) from that
    user's posts before it, each split by the gate's guess for its photo, as the user
    service keeps a user's communities and the recommender turns them into a prior: the
    serving code's own steps (a post's shares of at least MIN_POST_SHARE, counted by
    UserCommunities, made a prior by user_mix). Only the past counts, as in serving; a
    photo no simulated user posted, or whose poster had posted nothing before it, is left
    out."""
    from commands.experiments.photos import readable_photos
    from services.recommender.routing import MIN_POST_SHARE, user_mix
    from services.user.communities import UserCommunities

    wanted = {p.image.resolve() for p in photos}
    earlier: dict[Path, list[Post]] = {}  # photo → its poster's posts before it
    by_user: dict[str, list[Post]] = {}
    for post in simulated:
        past = by_user.setdefault(post.user, [])
        if post.image.resolve() in wanted:
            earlier.setdefault(post.image.resolve(), list(past))
        past.append(post)
    history = list({p.id: p for posts in earlier.values() for p in posts}.values())
    kept, described = readable_photos(history, store, progress=False)
    shares = dict(zip((p.id for p in kept), models.communities_of(described), strict=True))
    priors = {}
    for image, posts in earlier.items():
        counted = UserCommunities()
        for post in posts:
            counted.add("poster", {name: share for name, share in zip(
                models.communities, shares[post.id].tolist(), strict=True)
                if share >= MIN_POST_SHARE})
        prior = user_mix(counted.posts("poster"), models.communities)
        if prior is not None:
            priors[image] = prior
    return priors


def own_community_probability(models: object, store: object, posts: Sequence[Post],
                              community: int) -> dict[str, float] | None:
    """How well the served gate recognises the photo set of ``posts`` (community index
    ``community`` of the model): the mean P(own community | photo) and the share of photos
    whose most probable community is their own; None for a model of one community."""
    from commands.experiments.photos import readable_photos

    gate = next((m.gate for m in models.methods.values() if getattr(m, "gate", None)), None)
    if gate is None:
        return None
    _, photos = readable_photos(posts, store, progress=False)
    probabilities = gate(photos.features)
    return {"mean_probability": round(float(probabilities[:, community].mean()), 3),
            "argmax_right": round(100 * float((probabilities.argmax(axis=1) == community)
                                              .mean()), 2)}

