"""The photo → hashtag artifact as the scoring services load it: verified, and rebuilt
into the methods without retraining and without unpickling anything.

`hashrec train` (commands/train.py) writes it; the recommender, word and graph services
each load the methods they serve.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.graph.model import JointGraphMethod
from services.recommender.model import (
    FrequencyMethod,
    Fusion,
    GatedMethod,
    KnnMethod,
    Method,
    MlpMethod,
    RankFusion,
)
from services.word.autorec import AutoRecMethod
from services.word.model import InstaHashMethod
from services.word.semantic import SemanticMethod
from shared.artifacts import ArtifactReader, newest_artifact
from shared.backbone import class_names, vision_model_id
from shared.grpc_server import GrpcServer, LateServicer
from shared.limits import quoted
from shared.photos import PhotoSet

KIND = "image-to-hashtag"
#: the fused out-of-fold scores of the training photos (each row min-max scaled), and the
#: photo_key of each row: photo scores from a model that never saw the photo, for what is
#: fit on top of this model (the recommender's user weight)
OUT_OF_FOLD_SCORES = "out_of_fold_fused"
OUT_OF_FOLD_PHOTOS = "out_of_fold_photos"


@dataclass
class ImageModels:
    version: str
    vocabulary: tuple[str, ...]
    methods: dict[str, Method]
    fusion: Fusion
    directory: Path | None = None
    #: the learned fusion, served when every method answers (the linear one otherwise)
    ranker: RankFusion | None = None
    #: the photo sets it was trained on, in the gate's order (one: no gate)
    communities: tuple[str, ...] = ()
    #: each community's own learned fusion, fit on its photos scored as its own: serves
    #: a request that names the community
    community_rankers: dict[str, RankFusion] = field(default_factory=dict)

    def community_mix(self, community: str) -> np.ndarray | None:
        """The mix that routes a photo to the named community alone; None for a model of
        one community (nothing to route). ValueError, naming the choices, for a name the
        model was not trained on."""
        if community not in self.communities:
            raise ValueError(f"community {quoted(community)} is not one of this model's "
                             f"{list(self.communities)}")
        if len(self.communities) < 2:
            return None
        return np.eye(len(self.communities), dtype=np.float32)[
            self.communities.index(community)]

    def communities_of(self, photos: PhotoSet) -> np.ndarray | None:
        """Each photo's community mix as the gated methods weight it (the one it came
        with, else the gate's guess); None for a model of one community."""
        gated = next((m for m in self.methods.values() if isinstance(m, GatedMethod)), None)
        return None if gated is None else gated.mix(photos)

    def combine(self, per_method: dict[str, np.ndarray], community: str = "") -> np.ndarray:
        """The learned fusion of the methods' scores when all of them are there (the named
        ``community``'s own where it has one), else the linear fusion of those that are."""
        own = self.community_rankers.get(community)
        if own is not None and all(m in per_method for m in own.methods):
            return own.combine(per_method)
        if self.ranker is not None and all(m in per_method for m in self.ranker.methods):
            return self.ranker.combine(per_method)
        return self.fusion.combine(per_method)

    def scores(self, photos: PhotoSet, community: str = "",
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(fused scores, each method's scores), one row per photo, one column per hashtag;
        ``community``: the photos are posted to it (routed to it, its own fusion)."""
        if community:
            photos = photos.routed(self.community_mix(community))
        per_method = {name: method.scores(photos) for name, method in self.methods.items()}
        return self.combine(per_method, community), per_method


def _open(directory: Path) -> ArtifactReader:
    reader = ArtifactReader(directory)  # refuses a directory whose checksums do not match
    manifest = reader.manifest
    if manifest.get("kind") != KIND:
        raise ValueError(f"{directory}: not an {KIND} model directory")
    if manifest["vision_model"] != vision_model_id():
        raise ValueError(f"{directory}: trained on features of {manifest['vision_model']}, "
                         f"this vision model is {vision_model_id()}")
    return reader


def _load(reader: ArtifactReader, name: str) -> Method:
    loaders = {"frequency": FrequencyMethod.load, "knn": KnnMethod.load,
               "mlp": MlpMethod.load,
               "word": lambda r: InstaHashMethod.load(r, class_names()),
               "graph": lambda r: JointGraphMethod.load(r, class_names()),
               "autorec": lambda r: AutoRecMethod.load(r, class_names(), "autorec"),
               "instahash": lambda r: AutoRecMethod.load(r, class_names(), "instahash"),
               "autorec_masked": lambda r: AutoRecMethod.load(r, class_names(),
                                                              "autorec_masked"),
               "semantic": lambda r: SemanticMethod.load(r, class_names())}
    if name not in reader.manifest["methods"]:
        raise ValueError(f"{reader.directory}: has no {name!r} method "
                         f"(it holds {reader.manifest['methods']})")
    if len(reader.manifest.get("communities", ())) > 1:
        return GatedMethod.load(reader, name, loaders[name])
    return loaders[name](reader)


def served_methods(directory: Path, candidates: Sequence[str]) -> list[str]:
    """The ``candidates`` the model at ``directory`` holds (from its manifest, unverified:
    load_image_models verifies)."""
    import json

    held = json.loads((directory / "manifest.json").read_text())["methods"]
    return [m for m in candidates if m in held]


def load_image_models(directory: Path, methods: Sequence[str] | None = None) -> ImageModels:
    """The verified models of a `hashrec train` directory; ``methods``: only these (the
    recommender leaves word and graph to their own services)."""
    reader = _open(directory)
    manifest = reader.manifest
    names = manifest["methods"] if methods is None else methods
    ranker = RankFusion.load(reader) if "fusion_rank.json" in manifest["files"] else None
    communities = tuple(c["name"] for c in manifest.get("communities", ()))
    own = {name: RankFusion.load(reader.scoped(f"community/{name}")) for name in communities
           if f"community/{name}/fusion_rank.json" in manifest["files"]}
    return ImageModels(manifest["version"], tuple(reader.json("vocabulary")),
                       {name: _load(reader, name) for name in names}, Fusion.load(reader),
                       directory, ranker, communities, own)


def out_of_fold_scores(directory: Path) -> tuple[tuple[str, ...], list[str], np.ndarray] | None:
    """(vocabulary, photo keys, scaled fused scores: one row per key) of a verified
    artifact, or None for one written before they were kept."""
    reader = _open(directory)
    if f"{OUT_OF_FOLD_PHOTOS}.json" not in reader.manifest["files"]:
        return None
    return (tuple(reader.json("vocabulary")), reader.json(OUT_OF_FOLD_PHOTOS),
            reader.array(OUT_OF_FOLD_SCORES).astype(np.float32))


async def load_newer(service: str, current: Path, methods: Sequence[str],
                     ) -> tuple[Path, ImageModels] | None:
    """The newest version beside ``current`` (in its folder of versions), loaded and
    verified in a worker thread, when it is newer than ``current``; None when there is
    none, or when it fails to load or verify (logged with the reason: the caller keeps
    serving ``current``)."""
    import asyncio
    import logging

    log = logging.getLogger(f"services.{service}")
    newest = newest_artifact(current.parent, KIND)
    if newest is None or newest.name <= current.name:
        log.info("%s: no model newer than %s; serving it still", service, current.name)
        return None
    try:
        models = await asyncio.get_running_loop().run_in_executor(
            None, lambda: load_image_models(newest, served_methods(newest, methods)))
    except Exception as error:  # any failure to load keeps the serving version
        log.error("%s: refused model %s (%s: %s); still serving %s", service, newest.name,
                  type(error).__name__, error, current.name)
        return None
    return newest, models


def swap_on_reload(server: GrpcServer, late: LateServicer, service: str, model_dir: Path,
                   methods: Sequence[str],
                   make: Callable[[ImageModels, object], Awaitable[object]]) -> None:
    """Gives ``server`` its ``reload``: the newest verified version beside the serving one
    (``load_newer``) replaces it, as the servicer ``make(models, serving servicer)``
    builds. Calls in flight finish on the servicer they started on; new calls go to the
    new one from the moment it is set."""
    import logging

    log = logging.getLogger(f"services.{service}")
    current = [model_dir]

    async def reload() -> None:
        found = await load_newer(service, current[0], methods)
        if found is None:
            return
        directory, models = found
        late.target = server.servicer = await make(models, late.target)
        log.info("%s: now serving model %s (was %s)", service, models.version,
                 current[0].name)
        current[0] = directory

    server.reload = reload
