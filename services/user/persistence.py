"""A user lookup's state on disk: the snapshots of what online updates changed
(``profiles`` / ``restore_profiles``, services/user/journal.py writes them) and the trained
model's artifact (``save`` / ``load``: plain arrays and JSON under a checksummed manifest,
shared/artifacts.py). A mixin of UserHashtagLookup (services/user/lookup.py), which holds
the state it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from services.user.effects import ContentModel, MainEffects
from services.user.profiles import SparseProfiles
from services.user.tensor import ARRAYS, TensorParams, TensorWeights
from shared.artifacts import ArtifactReader, ArtifactWriter

#: the artifact kind; "user-tensor" artifacts (the tensor over a user-frequency prior,
#: before the main effects) are not read
KIND = "user-tensor-effects"


class LookupPersistence:
    """``profiles``, ``restore_profiles``, ``save`` and ``load`` of UserHashtagLookup."""

    # the lookup's state these read and write (services/user/lookup.py)
    lock: Any
    user_ids: list[str]
    user_index: dict[str, int]
    trained_users: int
    user_vectors: np.ndarray
    post_counts: np.ndarray
    user_hashtags: SparseProfiles

    # --- profiles: what online updates change, for snapshots of the serving state -------
    def profiles(self) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        """(arrays, lists) of everything ``update`` and ``add_photos`` changed since the
        trained model: every user's rows and the photos added after training. A copy,
        taken under ``lock``."""
        with self.lock:
            arrays = {"user_vectors": self.user_vectors.copy(),
                      "post_counts": self.post_counts.copy(), **self.user_hashtags.arrays()}
            # the uploads somebody still owns: a photo taken back leaves no trace
            added = [row for row in range(self.trained_photos, len(self.photo_ids))
                     if self.owners.owned(self.photo_ids[row])]
            arrays["added_photo_features"] = (
                self.photo_features[added].copy() if self.photo_features is not None
                else np.zeros((0, self.projection.shape[0]), np.float32))
            lists = {"users": list(self.user_ids), "trained_users": self.trained_users,
                     "added_photo_ids": [self.photo_ids[row] for row in added],
                     "photo_owners": self.owners.state(), "requests": self.requests.state(),
                     "communities": self.communities.state()}
        return arrays, lists

    def restore_profiles(self, arrays: dict[str, np.ndarray],
                         lists: dict[str, list[str]]) -> None:
        """Puts back what ``profiles`` returned (on this lookup's trained model)."""
        users = lists["users"]
        trained = users[:len(self.user_ids)]
        if len(trained) != len(self.user_ids) or any(
                user and user != own for user, own in zip(trained, self.user_ids, strict=True)) \
                or len(self.photo_ids) != self.trained_photos:
            raise ValueError("profiles belong to another model: its users or photos differ")
        n, vocabulary = len(users), len(self.vocabulary)
        shapes = {"user_vectors": (n, self.user_vectors.shape[1]), "post_counts": (n,)}
        if "profile_bounds" in arrays:
            shapes["profile_bounds"] = (n + 1,)
        else:  # a snapshot from before profiles were sparse: dense rows
            shapes["hashtag_counts"] = (n, vocabulary)
            if self.effects is not None:
                shapes["expected_uses"] = (n, vocabulary)
        for name, shape in shapes.items():
            if arrays[name].shape != shape:
                raise ValueError(f"profile array {name} is {arrays[name].shape}, not {shape}")
        user_hashtags = SparseProfiles.from_arrays(vocabulary, arrays) \
            if "profile_bounds" in arrays else SparseProfiles.from_dense(
                arrays["hashtag_counts"], arrays.get("expected_uses"))
        vectors = arrays["user_vectors"].astype(np.float32)
        post_counts = arrays["post_counts"].astype(np.float64)
        # a trained user another shard owns (services/user/shards.py): the model's row
        as_trained = np.flatnonzero(post_counts[:self.trained_users] < 0)
        vectors[as_trained] = self.user_vectors[as_trained]
        post_counts[as_trained] = self.post_counts[as_trained]
        for row in as_trained.tolist():
            user_hashtags.rows[row] = self.user_hashtags.rows[row]
        with self.lock:
            self.user_vectors, self.post_counts = vectors, post_counts
            self.user_hashtags = user_hashtags
            self.user_ids = list(users)
            self.user_index = {user: row for row, user in enumerate(users) if user}
        if lists["added_photo_ids"]:
            self.add_photos(lists["added_photo_ids"], arrays["added_photo_features"])
        self.owners.restore(lists.get("photo_owners", {}))
        self.requests.restore(lists.get("requests", []))
        self.communities.restore(lists.get("communities", {}))

    # --- persistence: shared/artifacts.py (plain arrays, checksummed manifest) -----------
    def save(self, directory: Path) -> Path:
        state = {**self.model.arrays, "users.weight": self.user_vectors}  # with the updates
        writer = ArtifactWriter(directory)
        for name in ARRAYS:
            writer.array(name, state[name])
        for name in ("post_counts", "hashtag_counts", "mean_user"):
            writer.array(name, getattr(self, name))  # the trained users': dense
        effects = None
        if self.effects is not None:
            writer.array("photo_weight", self.effects.content.weight)
            writer.array("photo_bias", self.effects.content.bias)
            writer.array("expected_uses", self.expected_uses)
            effects = {"smoothing": self.effects.smoothing, "beta": self.effects.beta,
                       "gamma": self.effects.gamma}
        if self.photo_features is not None:
            writer.array("photo_features", self.photo_features)
        writer.json("photo_ids", self.photo_ids)
        writer.json("communities", self.communities.state())
        return writer.close({"kind": KIND, "vocabulary": list(self.vocabulary),
                             "users": self.user_ids, "params": self.model.params.__dict__,
                             "main_effects": effects, "recommender": self.recommender_fit})

    @classmethod
    def load(cls, directory: Path) -> Any:  # the UserHashtagLookup
        reader = ArtifactReader(directory)  # refuses files that do not match the manifest
        manifest = reader.manifest
        if manifest.get("kind") != KIND:
            raise ValueError(f"{directory}: not a {KIND} model")
        arrays = {name: reader.array(name) for name in
                  (*ARRAYS, "post_counts", "hashtag_counts", "mean_user")}
        model = TensorWeights(TensorParams(**manifest["params"]),
                              {name: arrays[name] for name in ARRAYS}, arrays["mean_user"])
        effects = None
        if manifest.get("main_effects") is not None:
            weights = manifest["main_effects"]
            effects = MainEffects(ContentModel(reader.array("photo_weight"),
                                             reader.array("photo_bias")),
                                  reader.array("expected_uses"), float(weights["smoothing"]),
                                  float(weights["beta"]), float(weights["gamma"]))
        lookup = cls(model, manifest["vocabulary"], manifest["users"], arrays["post_counts"],
                     arrays["hashtag_counts"], effects, arrays["mean_user"])
        photo_ids = reader.json("photo_ids") if "photo_ids.json" in manifest["files"] else []
        if photo_ids:
            lookup.add_photos(photo_ids, reader.array("photo_features"))
        lookup.trained_photos = len(lookup.photo_ids)
        lookup.recommender_fit = manifest.get("recommender")
        if "communities.json" in manifest["files"]:
            lookup.communities.restore(reader.json("communities"))
        return lookup
