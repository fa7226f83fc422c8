"""Per-user hashtag lookup over the tensor model, cold users, online profiles, persistence.

The score of hashtag i for photo x and user k (services/user/model.py):

    s_k(h_i | x) = h_iᵀ W^(u'_k) f + β log P̃_k(h_i)

Exact top K by one FAISS search and a small rescoring: each hashtag is indexed as
[h_i, log P(h_i)] and queried with [W^(u'_k) f, β]. For a hashtag user k never used,
log P̃_k(h) = log P(h) + log(m / (n_k + m)), a shift the same for all of them, so FAISS
orders those exactly; a hashtag the user did use only gains (c_kh > 0). The top K is
therefore among FAISS's top K and the user's own hashtags, which are rescored exactly.

Cold-user rule, with n_k the user's posts seen so far and C = COLD_START_POSTS = 1:
    known user:    u'_k = (n_k u_k + C ū) / (n_k + C),  prior P̃_k (shrunk to P by m uses)
    unknown user:  u' = ū (the user-agnostic model),     prior P (the global frequency)
A stranger gets the agnostic tensor plus the global frequency prior (weight β, or 1 for a
model trained without the prior); a known user their own embedding and habits, both pulled
toward everyone's while they have posted little.

``update`` learns from one accepted post (photo, hashtags) without retraining the rest:
only that user's embedding moves (a few Adam steps on the softmax likelihood of the
accepted hashtags), and that user's counts, hence their prior, grow.

Retrieval (Veit §4.3): the photos for hashtag h as user k would tag them, ranked by
s(h, f_j, u_k) = (W^(u'_k)ᵀ h) · f_j (the prior is the same for every photo): one FAISS
inner-product search over the projected photo vectors f_j = P x_j.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from services.user.model import TensorModel, TensorParams, standardized
from shared.artifacts import ArtifactReader, ArtifactWriter
from shared.index import InnerProductIndex

COLD_START_POSTS = 1.0
KIND = "user-tensor"
ARRAYS = ("hashtags.weight", "users.weight", "project.weight", "project.bias", "core",
          "feature_mean", "feature_scale")


def smoothed_log_prior(counts: np.ndarray, global_share: np.ndarray, strength: float,
                       ids: np.ndarray | slice = slice(None)) -> np.ndarray:
    """log P̃(h) = log (c_h + m P(h)) / (n + m) along the last axis of ``counts`` (one user's
    row, or many); ``ids`` keeps only those hashtags, the norm n still counting them all.
    The numpy twin of services/user/model.py's PriorOffsets."""
    return np.log(counts[..., ids] + strength * global_share[ids]) \
        - np.log(counts.sum(axis=-1, keepdims=True) + strength)


class UserHashtagLookup:
    def __init__(self, model: TensorModel, vocabulary: Sequence[str], user_ids: Sequence[str],
                 post_counts: np.ndarray, hashtag_counts: np.ndarray,
                 mean_user: np.ndarray | None = None, log_prior: np.ndarray | None = None,
                 ) -> None:
        """``mean_user`` (ū) and ``log_prior`` belong to the trained model: taken from it
        when not given, and never moved by online updates, so that one user's feedback
        changes nobody else's ranking."""
        self.model = model.eval()
        self.vocabulary = tuple(vocabulary)
        self.user_index = {user: row for row, user in enumerate(user_ids)}
        self.user_ids = list(user_ids)
        self.post_counts = np.asarray(post_counts, dtype=np.float64).copy()
        self.hashtag_counts = np.asarray(hashtag_counts, dtype=np.float64).copy()
        with torch.no_grad():
            self.user_vectors = self.model.users.weight.numpy().copy()
            self.mean_user = (self.model.mean_user().numpy() if mean_user is None
                              else np.asarray(mean_user, dtype=np.float32))
            hashtag_vectors = self.model.hashtags.weight.numpy()
        if log_prior is None:
            total = self.hashtag_counts.sum(axis=0)
            log_prior = np.log((total + 1.0) / (total.sum() + len(total)))
        self.log_prior = np.asarray(log_prior, dtype=np.float32)
        self.global_share = np.exp(self.log_prior.astype(np.float64))
        self.prior_weight = float(model.params.prior_weight)
        self.prior_strength = float(model.params.prior_strength)
        self.hashtag_vectors = hashtag_vectors.copy()
        # Serving runs in numpy (a single query costs a third of torch's per-op overhead):
        # the feature standardisation folded into the projection, f = x P'ᵀ + b'.
        with torch.no_grad():
            weight = self.model.project.weight.numpy().astype(np.float64)
            scale = self.model.feature_scale.numpy().astype(np.float64)
            mean = self.model.feature_mean.numpy().astype(np.float64)
            self.projection = np.ascontiguousarray((weight / scale).T, dtype=np.float32)
            self.projection_bias = (self.model.project.bias.numpy()
                                    - weight @ (mean / scale)).astype(np.float32)
            self.core = self.model.core.numpy().copy()
        self.index_vectors = np.hstack([hashtag_vectors, self.log_prior[:, None]])
        self.index = InnerProductIndex(self.index_vectors)
        self.hashtag_rows = {term: row for row, term in enumerate(self.vocabulary)}
        self.photo_ids: list[str] = []
        self.photo_features: np.ndarray | None = None
        self.photo_index: InnerProductIndex | None = None

    def add_photos(self, photo_ids: Sequence[str], features: np.ndarray) -> None:
        """Makes photos retrievable (their raw CNN features are kept for persistence)."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        if len(photo_ids) != len(features):
            raise ValueError(f"{len(photo_ids)} photo ids for {len(features)} feature rows")
        known = set(self.photo_ids)  # a photo posted again is indexed once
        new = [row for row, photo in enumerate(photo_ids) if photo not in known]
        if len(new) < len(photo_ids):
            photo_ids, features = [photo_ids[row] for row in new], features[new]
        if not photo_ids:
            return
        projected = self.photo_vectors(features)
        if self.photo_index is None:
            self.photo_index = InnerProductIndex(projected)
            self.photo_features = features
        else:
            self.photo_index.add(projected)
            self.photo_features = np.vstack([self.photo_features, features])
        self.photo_ids.extend(photo_ids)

    def retrieve(self, hashtag: int, user: str | None, k: int = 10,
                 ) -> list[tuple[str, float]]:
        """The k photos with the highest s(h, f_j, u) for this user (module docstring)."""
        if not 0 <= hashtag < len(self.vocabulary):
            raise ValueError(f"hashtag id must lie in [0, {len(self.vocabulary)})")
        if self.photo_index is None:
            return []
        user_vector, _ = self.user_vector(user)
        query = np.einsum("e,edf,d->f", user_vector, self.core, self.hashtag_vectors[hashtag])
        scores, ids = self.photo_index.search(query[None, :], k)
        return [(self.photo_ids[i], float(s)) for s, i in zip(scores[0], ids[0], strict=True)]

    def known(self, user: str | None) -> bool:
        return user is not None and user in self.user_index

    def user_vector(self, user: str | None) -> tuple[np.ndarray, float]:
        """(u'_k, weight of the log prior) by the cold-user rule in the module docstring."""
        if not self.known(user):
            return self.mean_user, self.prior_weight or 1.0
        row = self.user_index[user]
        n = self.post_counts[row]
        shrunk = (n * self.user_vectors[row] + COLD_START_POSTS * self.mean_user) \
            / (n + COLD_START_POSTS)
        return shrunk.astype(np.float32), self.prior_weight

    def log_user_prior(self, user: str | None, ids: np.ndarray | None = None) -> np.ndarray:
        """log P̃_k(h) for every hashtag, or for ``ids`` only; log P(h) for a stranger."""
        ids = slice(None) if ids is None else ids
        if not self.known(user):
            return self.log_prior[ids].astype(np.float64)
        return smoothed_log_prior(self.hashtag_counts[self.user_index[user]],
                                  self.global_share, self.prior_strength, ids)

    def queries(self, features: np.ndarray, users: Sequence[str | None],
                agnostic: bool = False) -> np.ndarray:
        """[W^(u') f, weight of the log prior] for each photo; ``agnostic``: everyone a
        stranger."""
        vectors, weights = zip(*(self.user_vector(None if agnostic else user)
                                 for user in users), strict=True)
        photos = self.photo_vectors(features)
        # q = Σ_r u_r (W_r f): contract the photo first (E × D per photo), then the user.
        per_coordinate = self.core @ photos.T  # E × D × n
        q = np.einsum("ne,edn->nd", np.stack(vectors), per_coordinate)
        return np.hstack([q, np.array(weights, np.float32)[:, None]]).astype(np.float32)

    def photo_vectors(self, features: np.ndarray) -> np.ndarray:
        """f = P x (standardised features), one row per photo."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        return features @ self.projection + self.projection_bias

    def top_k(self, features: np.ndarray, users: Sequence[str | None], k: int = 10,
              agnostic: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, hashtag ids), best first: FAISS, then the user's own hashtags rescored."""
        k = min(k, len(self.vocabulary))
        queries = self.queries(features, users, agnostic)
        _, candidates = self.index.search(queries, k)
        out_scores = np.empty((len(users), k), np.float32)
        out_ids = np.empty((len(users), k), np.int64)
        for row, user in enumerate(users):
            ids = candidates[row]
            user = None if agnostic else user
            if self.known(user):
                used = np.flatnonzero(self.hashtag_counts[self.user_index[user]])
                ids = np.union1d(ids, used)
            exact = self.hashtag_vectors[ids] @ queries[row, :-1] \
                + queries[row, -1] * self.log_user_prior(user, ids)
            order = np.argsort(-exact, kind="stable")[:k]
            out_scores[row], out_ids[row] = exact[order], ids[order]
        return out_scores, out_ids

    def scores(self, features: np.ndarray, users: Sequence[str | None],
               agnostic: bool = False, prior: bool = True) -> np.ndarray:
        """Every hashtag's score (brute force; for evaluation and to check ``top_k``);
        ``prior=False`` leaves the log prior out (the tensor term alone)."""
        queries = self.queries(features, users, agnostic)
        scores = queries[:, :-1] @ self.hashtag_vectors.T
        if prior:
            scores = scores + queries[:, -1:] * np.stack(
                [self.log_user_prior(None if agnostic else user) for user in users])
        return scores

    def update(self, user: str, features: np.ndarray, accepted: Sequence[int],
               steps: int = 30, learning_rate: float = 0.05) -> None:
        """Learn from one post: this user's embedding and counts change, nothing else."""
        if not accepted:
            raise ValueError("an update needs at least one accepted hashtag")
        if any(not 0 <= i < len(self.vocabulary) for i in accepted):
            raise ValueError(f"hashtag ids must lie in [0, {len(self.vocabulary)})")
        if user not in self.user_index:
            self.user_index[user] = len(self.user_ids)
            self.user_ids.append(user)
            self.user_vectors = np.vstack([self.user_vectors, self.mean_user])
            self.post_counts = np.append(self.post_counts, 0.0)
            self.hashtag_counts = np.vstack([self.hashtag_counts,
                                             np.zeros(len(self.vocabulary))])
        row = self.user_index[user]
        vector = torch.tensor(self.user_vectors[row], requires_grad=True)
        optimizer = torch.optim.Adam([vector], lr=learning_rate)
        with torch.no_grad():
            photo = self.model.photo(standardized(self.model, np.atleast_2d(features)))
            hashtag_vectors = self.model.hashtags.weight
            # q = W^(u) f is linear in u: q = u · A with A_r = W_r f, computed once.
            per_coordinate = torch.einsum("edf,f->ed", self.model.core, photo[0])
        target = torch.tensor(list(accepted))
        offset = torch.from_numpy(self.prior_weight * self.log_user_prior(user)).float()
        for _ in range(steps):
            optimizer.zero_grad()
            logits = hashtag_vectors @ (vector @ per_coordinate) + offset
            loss = -torch.log_softmax(logits, dim=0)[target].mean()
            loss.backward()
            optimizer.step()
        self.user_vectors[row] = vector.detach().numpy()
        self.post_counts[row] += 1
        self.hashtag_counts[row, list(accepted)] += 1

    # --- persistence: shared/artifacts.py (plain arrays, checksummed manifest) -----------
    def save(self, directory: Path) -> Path:
        state = {name: tensor.numpy() for name, tensor in self.model.state_dict().items()}
        state["users.weight"] = self.user_vectors  # with the online updates
        writer = ArtifactWriter(directory)
        for name in ARRAYS:
            writer.array(name, state[name])
        for name in ("post_counts", "hashtag_counts", "mean_user", "log_prior"):
            writer.array(name, getattr(self, name))
        if self.photo_features is not None:
            writer.array("photo_features", self.photo_features)
        writer.json("photo_ids", self.photo_ids)
        return writer.close({"kind": KIND, "vocabulary": list(self.vocabulary),
                             "users": self.user_ids, "params": self.model.params.__dict__})

    @classmethod
    def load(cls, directory: Path) -> UserHashtagLookup:
        reader = ArtifactReader(directory)  # refuses files that do not match the manifest
        manifest = reader.manifest
        if manifest.get("kind") != KIND:
            raise ValueError(f"{directory}: not a {KIND} model")
        arrays = {name: reader.array(name) for name in
                  (*ARRAYS, "post_counts", "hashtag_counts", "mean_user", "log_prior")}
        model = TensorModel(len(manifest["vocabulary"]), len(manifest["users"]),
                            arrays["project.weight"].shape[1],
                            TensorParams(**manifest["params"]))
        model.register_buffer("feature_mean", torch.zeros(arrays["feature_mean"].shape))
        model.register_buffer("feature_scale", torch.ones(arrays["feature_scale"].shape))
        model.load_state_dict({name: torch.from_numpy(arrays[name]) for name in ARRAYS})
        lookup = cls(model, manifest["vocabulary"], manifest["users"], arrays["post_counts"],
                     arrays["hashtag_counts"], arrays["mean_user"], arrays["log_prior"])
        photo_ids = reader.json("photo_ids") if "photo_ids.json" in manifest["files"] else []
        if photo_ids:
            lookup.add_photos(photo_ids, reader.array("photo_features"))
        return lookup
