"""The training photos of every community: each photo set's readable photos from the
feature store, its own vocabulary, and their union. Held in memory, or streamed to disk a
chunk at a time and mapped read-only, so that the training driver holds none of them
(docs/scaling.md)."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from commands.engine import Engine, LocalEngine
from services.vision.store import FeatureStore
from shared.data.normalize import Vocabulary
from shared.data.readers import Post
from shared.photos import PhotoSet, photo_key

log = logging.getLogger(__name__)


def readable_photos(posts: Sequence[Post], store: FeatureStore, progress: bool,
                    engine: Engine | None = None) -> tuple[list[Post], PhotoSet]:
    """The posts whose photo decodes, and their features (from the store, or computed)."""
    with_images = [p for p in posts if p.image is not None]
    embedding, ok = (engine or LocalEngine()).embed(store, [p.image for p in with_images],
                                                    progress=progress)
    kept = [p for p, good in zip(with_images, ok, strict=True) if good]
    _log_unread(len(posts), len(with_images), len(kept))
    return kept, PhotoSet(embedding.features[ok], embedding.probabilities[ok])


def _log_unread(posts: int, with_photo: int, read: int) -> None:
    """One line when some posts bring no photo to train on: tag-only posts (a corpus of
    hashtag lists) are not broken photos, so the two are counted apart."""
    if read < posts:
        log.info("photos: %d of %d posts have a photo that decodes (%d carry no photo, %d "
                 "do not decode)", read, posts, posts - with_photo, with_photo - read)


#: photos embedded (or read from the feature store) at once when they are streamed to disk
STREAM_CHUNK = 8192


@dataclass(frozen=True)
class _RowFiles:
    """A community's readable photos' features and probabilities, appended row by row to
    two raw files: read back a few rows at a time, never all at once."""

    folder: Path
    count: int
    widths: tuple[int, int]
    dtype: np.dtype

    def rows(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``chosen`` rows of both files: a copy of those rows alone (the pages they
        lie on are read; the mapping goes when this returns)."""
        return tuple(np.array(np.memmap(self.folder / f"{name}.raw", self.dtype, mode="r",
                                        shape=(self.count, width))[chosen])
                     for name, width in zip(("features", "probabilities"), self.widths,
                                            strict=True))


def _photos_to_disk(posts: Sequence[Post], store: FeatureStore, progress: bool,
                    engine: Engine | None, folder: Path) -> tuple[list[Post], _RowFiles]:
    """``readable_photos``, STREAM_CHUNK photos at a time, the readable ones' rows appended to raw
    files in ``folder``: the driver holds one chunk of a community, not the community."""
    from tqdm import tqdm

    with_images = [p for p in posts if p.image is not None]
    kept: list[Post] = []
    folder.mkdir()
    widths, dtype = (0, 0), np.dtype(np.float32)
    with (folder / "features.raw").open("wb") as features, \
            (folder / "probabilities.raw").open("wb") as probabilities, \
            tqdm(total=len(with_images), desc="image features", unit="img",
                 disable=not progress) as bar:
        step = getattr(engine, "stream_chunk", STREAM_CHUNK)
        for start in range(0, len(with_images), step):
            chunk = with_images[start:start + step]
            embedding, ok = (engine or LocalEngine()).embed(store, [p.image for p in chunk],
                                                            progress=False)
            kept += [p for p, good in zip(chunk, ok, strict=True) if good]
            features.write(np.ascontiguousarray(embedding.features[ok], dtype).data)
            probabilities.write(np.ascontiguousarray(embedding.probabilities[ok], dtype).data)
            widths = (embedding.features.shape[1], embedding.probabilities.shape[1])
            bar.update(len(chunk))
    _log_unread(len(posts), len(with_images), len(kept))
    return kept, _RowFiles(folder, len(kept), widths, dtype)


def without_ignored(posts: Sequence[Post], ignore: frozenset[str]) -> list[Post]:
    return [replace(p, hashtags=tuple(t for t in p.hashtags if t not in ignore))
            for p in posts]


@dataclass(frozen=True)
class Community:
    """One photo set: a community of posters with its own way of tagging; ``ignore``: its
    collection artefacts (e.g. the search hashtags it was gathered by), removed from its
    posts before anything else."""

    name: str
    posts: Sequence[Post]
    ignore: frozenset[str] = frozenset()


def community_photos(communities: Sequence[Community], store: FeatureStore, min_count: int,
                     max_vocab: int, progress: bool = True, engine: Engine | None = None,
                     scratch: Path | None = None,
                     ) -> tuple[PhotoSet, tuple[str, ...], dict[str, Vocabulary]]:
    """The training photos of every community with their in-vocabulary hashtags and
    community index, the vocabulary (each community's own, ``min_count`` / ``max_vocab``
    within it, then their union: a large community's many tags do not crowd out a small
    one's), and each community's vocabulary. ``scratch``: a folder the features and
    probabilities are streamed to from the store, STREAM_CHUNK photos at a time, and read
    back memory-mapped (the driver then holds none of them; the pool's workers map the
    same file)."""
    kept_by_community, vocabularies = [], {}
    for number, community in enumerate(communities):
        posts = without_ignored(community.posts, community.ignore)
        kept, photos = (readable_photos(posts, store, progress, engine) if scratch is None else
                        _photos_to_disk(posts, store, progress, engine,
                                        scratch / f"community-{number}"))
        vocabularies[community.name] = Vocabulary.build([p.hashtags for p in kept],
                                                        min_count, max_vocab)
        kept_by_community.append((kept, photos))
    terms = tuple(dict.fromkeys(t for v in vocabularies.values() for t in v.terms))
    if not terms:
        raise ValueError(f"no hashtag occurs {min_count} times among the training photos")
    index = {term: row for row, term in enumerate(terms)}
    rows, hashtags, origin, keys = [], [], [], []
    for number, (community, (kept, _)) in enumerate(zip(communities, kept_by_community,
                                                        strict=True)):
        own = vocabularies[community.name]
        chosen = []
        for row, post in enumerate(kept):
            ids = [index[t] for t in dict.fromkeys(post.hashtags) if t in own.index]
            if ids:
                chosen.append(row)
                hashtags.append(ids)
                origin.append(number)
                keys.append(photo_key(post.image))
        rows.append(np.array(chosen, dtype=np.int64))
    del kept, _  # the loop's last community: freed with the others as its rows go out
    if not hashtags:
        raise ValueError("no training photo has a hashtag in the vocabulary")

    def chosen_rows() -> Iterator[tuple[np.ndarray, ...]]:
        for number, chosen in enumerate(rows):  # each community freed once its rows are out
            photos = kept_by_community[number][1]
            kept_by_community[number] = None
            if isinstance(photos, _RowFiles):
                for start in range(0, len(chosen), STREAM_CHUNK):
                    yield photos.rows(chosen[start:start + STREAM_CHUNK])
                shutil.rmtree(photos.folder)
                continue
            part = photos.features[chosen], photos.probabilities[chosen]
            del photos
            yield part

    features, probabilities = _stacked(chosen_rows(), len(hashtags), scratch)
    return (PhotoSet(features, probabilities, hashtags, np.array(origin), keys), terms,
            vocabularies)


def _stacked(parts: Iterator[tuple[np.ndarray, ...]], n: int, scratch: Path | None,
             names: tuple[str, ...] = ("features", "probabilities"),
             ) -> tuple[np.ndarray, ...]:
    """The parts' rows in order, as one array of ``n`` rows a field: filled in memory (the
    parts freed as they are copied: the rows once plus one part, not twice), or with
    ``scratch`` written to scratch/<name>.npy a part at a time, never mapped for writing,
    and mapped read-only: the driver holds none of it and the pool's workers map it."""
    if scratch is None:
        arrays, at = None, 0
        for part in parts:
            arrays = arrays or [np.empty((n, *a.shape[1:]), a.dtype) for a in part]
            for array, rows in zip(arrays, part, strict=True):
                array[at:at + len(rows)] = rows
            at += len(part[0])
        return tuple(arrays)
    paths = [scratch / f"{name}.npy" for name in names]
    with contextlib.ExitStack() as files:
        handles = [files.enter_context(path.open("wb")) for path in paths]
        started = False
        for part in parts:
            for handle, rows in zip(handles, part, strict=True):
                if not started:
                    np.lib.format.write_array_header_1_0(handle, {
                        "descr": np.lib.format.dtype_to_descr(rows.dtype),
                        "fortran_order": False, "shape": (n, *rows.shape[1:])})
                handle.write(np.ascontiguousarray(rows).data)
            started = True
    return tuple(np.load(path, mmap_mode="r") for path in paths)


def n_communities(photos: PhotoSet) -> int:
    return 1 if photos.communities is None else int(photos.communities.max()) + 1


def training_photos(posts: Sequence[Post], store: FeatureStore, ignore: frozenset[str],
                    min_count: int, max_vocab: int, progress: bool = True,
                    ) -> tuple[PhotoSet, Vocabulary]:
    """The training photos of one photo set with their in-vocabulary hashtags, and that
    vocabulary."""
    photos, _, vocabularies = community_photos([Community("photos", posts, ignore)], store,
                                               min_count, max_vocab, progress)
    return photos, vocabularies["photos"]
