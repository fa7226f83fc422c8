"""Maximum-inner-product search with FAISS (nearest hashtags, nearest photos).

Hashtag indexes are small and their callers rely on exact bounds: they stay flat. Photo
indexes grow with the photos, so ``photo_index`` chooses by size (``IndexConfig``): exact
below a threshold; above it an IVF index (4·√n lists, trained on the data), or HNSW, with
the number of lists probed (or efSearch) the smallest that reaches a recall@10 target
against exact search, measured on the data's own vectors; and 8-bit scalar quantisation
(IVF-SQ8, a quarter of the memory) when the flat vectors would not fit a memory budget.
bench/index.py measures the trade-offs at 10k, 100k and 1M vectors.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from shared.config import env_number

log = logging.getLogger(__name__)

#: the index kinds: flat (exact), ivf (IVF-Flat), ivf-sq8, hnsw (HNSW32)
KINDS = ("flat", "ivf", "ivf-sq8", "hnsw")
#: the settings tried, smallest first: lists probed (IVF) or efSearch (HNSW)
PROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
#: how many of the data's vectors measure recall while tuning
TUNING_QUERIES = 256


def l2_normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), so inner product = cosine."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class IndexConfig:
    """How a photo index is chosen. ``kind``: auto (by size) or one of KINDS."""

    kind: str = "auto"
    #: up to this many vectors the index is exact (bench/index.py: at 10k exact search
    #: still answers a single query in well under a millisecond)
    exact_max: int = 50_000
    #: the recall@10 against exact search that the probes are chosen to reach
    recall_target: float = 0.95
    #: above this many MB of float32 vectors, quantise (IVF-SQ8); 0: no budget
    memory_mb: float = 0.0
    #: seed of the IVF's k-means and of the tuning queries' choice
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind != "auto" and self.kind not in KINDS:
            raise ValueError(f"index kind must be auto or one of {', '.join(KINDS)}, "
                             f"got {self.kind!r}")
        if self.exact_max < 0:
            raise ValueError(f"exact_max must be >= 0, got {self.exact_max}")
        if not 0 < self.recall_target <= 1:
            raise ValueError(f"recall target must be in (0, 1], got {self.recall_target}")
        if self.memory_mb < 0:
            raise ValueError(f"memory budget must be >= 0 MB, got {self.memory_mb}")

    @classmethod
    def from_env(cls) -> IndexConfig:
        """HASHREC_INDEX (auto|flat|ivf|ivf-sq8|hnsw), HASHREC_INDEX_EXACT_MAX,
        HASHREC_INDEX_RECALL, HASHREC_INDEX_MEMORY_MB."""
        return cls(kind=os.environ.get("HASHREC_INDEX", "auto").strip() or "auto",
                   exact_max=int(env_number("HASHREC_INDEX_EXACT_MAX", cls.exact_max, int)),
                   recall_target=env_number("HASHREC_INDEX_RECALL", cls.recall_target),
                   memory_mb=env_number("HASHREC_INDEX_MEMORY_MB", cls.memory_mb))

    def kind_for(self, n: int, dim: int) -> str:
        if self.kind != "auto":
            return self.kind
        if n <= self.exact_max:
            return "flat"
        if self.memory_mb and n * dim * 4 / 2**20 > self.memory_mb:
            return "ivf-sq8"
        return "ivf"


class InnerProductIndex:
    """Top-k rows of ``vectors`` by inner product with each query: exact (flat) unless
    ``config`` chooses otherwise for their number (``photo_index``)."""

    def __init__(self, vectors: np.ndarray, config: IndexConfig | None = None) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"index needs a non-empty 2-D array, got shape {vectors.shape}")
        self.config = config or IndexConfig(kind="flat")
        self._chunks = [vectors]  # added rows, joined only when ``vectors`` is read
        self.dim = vectors.shape[1]
        self.size = len(vectors)
        self._index = self._build()

    def _build(self) -> faiss.Index:
        config = self.config
        self.kind = config.kind_for(self.size, self.dim)
        self.built_size = self.size
        #: lists probed (IVF) or efSearch (HNSW); None for flat
        self.setting: int | None = None
        #: recall@10 against exact search on the tuning queries; 1.0 for flat
        self.recall = 1.0
        if self.kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
            index.add(self.vectors)
            return index
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.add(self.vectors)
            self.setting, self.recall = _tuned(
                index, lambda ef: setattr(index.hnsw, "efSearch", ef), EF_SEARCH,
                self.vectors, config)
        else:
            lists = max(1, min(int(4 * np.sqrt(self.size)), self.size // 39))
            spec = f"IVF{lists},{'SQ8' if self.kind == 'ivf-sq8' else 'Flat'}"
            index = faiss.index_factory(self.dim, spec, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(config.seed)
            # FAISS's k-means wants ≥ 39 points a list; 64 a list is plenty
            sample = min(self.size, 64 * lists)
            index.train(self.vectors[np.sort(rng.choice(self.size, sample, replace=False))])
            index.add(self.vectors)
            ivf = faiss.extract_index_ivf(index)
            self.setting, self.recall = _tuned(
                index, lambda k: setattr(ivf, "nprobe", k),
                (*(p for p in PROBES if p < lists), lists), self.vectors, config)
        if self.recall < config.recall_target:
            log.warning("%s index over %d vectors reaches recall@10 %.3f at most, under "
                        "the target %.2f", self.kind, self.size, self.recall,
                        config.recall_target)
        log.info("%s index over %d vectors: setting %s, recall@10 %.3f", self.kind,
                 self.size, self.setting, self.recall)
        return index

    @property
    def vectors(self) -> np.ndarray:
        """Every indexed row, in id order (joined on first read after ``add``: adding a
        photo copies nothing; an index loaded whole gives them back from FAISS)."""
        if not self._chunks:
            if self.kind in ("ivf", "ivf-sq8"):
                faiss.extract_index_ivf(self._index).make_direct_map()
            self._chunks = [self._index.reconstruct_n(0, self.size)]
        if len(self._chunks) > 1:
            self._chunks = [np.vstack(self._chunks)]
        return self._chunks[0]

    @classmethod
    def from_faiss(cls, index: faiss.Index, about: dict,
                   config: IndexConfig | None = None) -> InnerProductIndex:
        """An index built before (``save_index``), as it was: nothing is trained or
        tuned again."""
        loaded = cls.__new__(cls)
        loaded.config = config or IndexConfig.from_env()
        loaded._chunks, loaded._index = [], index
        loaded.dim, loaded.size = index.d, index.ntotal
        loaded.kind, loaded.built_size = about["kind"], about["built_size"]
        # the lists probed (efSearch) as tuned are in FAISS's file: ``_tuned`` leaves the
        # index at the setting it names
        loaded.setting, loaded.recall = about["setting"], about["recall"]
        return loaded

    def same_as(self, other: InnerProductIndex) -> bool:
        """Whether ``other`` answers as this index does: the same kind, tuning and vectors
        (kNN, graph and semantic each fit one of the same photos)."""
        return (self.kind, self.setting, self.recall, self.size, self.dim) == (
            other.kind, other.setting, other.recall, other.size, other.dim) and \
            self.vectors_digest() == other.vectors_digest()

    def vectors_digest(self) -> str:
        """sha256 of the indexed rows (kept from the build it travelled from: an
        approximate index unpickled holds no copy of them to hash; after ``add`` on an
        unpickled IVF-SQ8 index, of its quantised rows). Computed once, lazily: not for
        an index another thread adds to meanwhile."""
        if self.__dict__.get("_digest") is None:
            self._digest = hashlib.sha256(self.vectors.data).hexdigest()
        return self._digest

    @property
    def faiss_index(self) -> faiss.Index:
        """The FAISS index itself (for measuring it: bench/index.py)."""
        if self._index is None:  # an exact index unpickled: FAISS's copy made on first use
            index = faiss.IndexFlatIP(self.dim)
            index.add(self.vectors)
            self._index = index  # whole: a thread beside never searches it half-built
        return self._index

    def spill_to(self, folder: Path | None) -> None:
        """Pickled from now on, this index goes to a file in ``folder`` and its pickle
        carries the file's name: the receiving process reads the file (an exact index's
        vectors mapped read-only), never a pickled copy beside the unpickled one."""
        self._spill = folder

    def __getstate__(self) -> dict:
        """Pickled (a fit's result on its way from a pool's worker to the driver, which
        only writes it): the photos travel once, not twice. An exact index travels as its
        vectors alone and makes FAISS's copy of them when first searched; an approximate
        one as FAISS's index alone, as it is stored (``vectors`` reads them back from it:
        IVF-SQ8's as quantised); either by a file when spilled (``spill_to``). Either
        carries the digest of the rows it was built on."""
        state = dict(self.__dict__)
        state.pop("_stored", None)  # the copy unpickled is its own
        state["_digest"] = self.vectors_digest()
        folder = state.pop("_spill", None)
        if folder is not None:
            path = Path(folder) / f"index-{state['_digest']}-{self.kind}.bin"
            if not path.exists():  # pickled again (a retried task): the file is there
                partial = path.with_name(f".{path.name}.{os.getpid()}")
                if self.kind == "flat":
                    with partial.open("wb") as out:
                        np.save(out, self.vectors, allow_pickle=False)
                else:
                    faiss.write_index(self.faiss_index, str(partial))
                partial.replace(path)
            state["_chunks"], state["_index"], state["_spilled"] = [], None, str(path)
        elif self.kind == "flat":
            state["_chunks"], state["_index"] = [self.vectors], None
        else:
            state["_chunks"] = []
        return state

    def __setstate__(self, state: dict) -> None:
        spilled = state.pop("_spilled", None)
        self.__dict__.update(state)
        if spilled is None:
            return
        if self.kind == "flat":
            self._chunks = [np.load(spilled, mmap_mode="r", allow_pickle=False)]
        else:  # read in place, tuned as it was written: the driver that writes it into
            # the model copies the file (save_index) and never holds its lists
            self._stored = np.memmap(spilled, dtype=np.uint8, mode="r")
            self._index = mapped_faiss_index(self._stored)

    def search(self, queries: np.ndarray, k: int, excluded: Sequence[int] = (),
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (queries × min(k, size)), best first. Rows in ``excluded``
        are never returned (FAISS skips them while searching); when fewer than k rows
        remain, the missing places hold id -1."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, index {self.dim}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(k, self.size)
        if len(excluded):
            return self._search_excluding(queries, k, np.asarray(excluded, dtype=np.int64))
        scores, ids = self.faiss_index.search(queries, k)
        short = np.flatnonzero((ids < 0).any(axis=1))
        if len(short):  # the probed lists held fewer than k
            scores[short], ids[short] = self._search_wider(queries[short], k)
        return scores, ids

    def _search_wider(self, queries: np.ndarray, k: int, selector: Any = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Queries whose probed lists held fewer than k rows: an IVF index probes twice
        the lists until each has k (every list: an exhaustive search), reading only its
        own lists; an HNSW index goes exact over its rows (copied out of it, once)."""
        if self.kind not in ("ivf", "ivf-sq8"):
            exact = faiss.IndexFlatIP(self.dim)
            exact.add(self.vectors)
            return exact.search(queries, k, params=faiss.SearchParameters(sel=selector))
        lists = faiss.extract_index_ivf(self.faiss_index).nlist
        probes = faiss.extract_index_ivf(self.faiss_index).nprobe
        while True:
            probes = min(2 * probes, lists)
            # per call: the index itself is never changed (threads search it at once)
            scores, ids = self.faiss_index.search(queries, k, params=faiss.SearchParametersIVF(
                sel=selector, nprobe=probes))
            if probes == lists or not (ids < 0).any():
                return scores, ids

    def _search_excluding(self, queries: np.ndarray, k: int, excluded: np.ndarray,
                          ) -> tuple[np.ndarray, np.ndarray]:
        # both selectors stay referenced here while FAISS uses them: it keeps raw pointers
        batch = faiss.IDSelectorBatch(excluded)
        selector = faiss.IDSelectorNot(batch)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector,
                                                efSearch=self.faiss_index.hnsw.efSearch)
        elif self.kind == "flat":
            params = faiss.SearchParameters(sel=selector)
        else:
            params = faiss.SearchParametersIVF(
                sel=selector, nprobe=faiss.extract_index_ivf(self.faiss_index).nprobe)
        scores, ids = self.faiss_index.search(queries, k, params=params)
        short = np.flatnonzero((ids < 0).any(axis=1))
        if len(short) and self.kind != "flat":  # too few in the probed lists
            scores[short], ids[short] = self._search_wider(queries[short], k, selector)
        return scores, ids

    def add(self, vectors: np.ndarray) -> None:
        """Appends rows; their ids continue from ``size``. The index is built anew when
        the size calls for another kind, or when an approximate one has doubled since it
        was built (its lists and probes were fit to fewer vectors)."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, index {self.dim}")
        size = self.size + len(vectors)
        rebuilt = (self.config.kind_for(size, self.dim) != self.kind
                   or (self.kind != "flat" and size > 2 * self.built_size))
        if self.__dict__.get("_stored") is not None and not rebuilt:  # read in place
            # from a file: a copy of its own to grow (FAISS aborts on resizing a mapped list)
            self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
            self._stored = None
        index = self.faiss_index  # FAISS's copy of the rows so far, before these join them
        if not self._chunks:  # loaded whole: the rows so far from FAISS first
            self._chunks = [self.vectors]
        self._chunks.append(vectors)
        self.size = size
        self._digest = None
        if rebuilt:
            self._index = self._build()
            self._stored = None
        else:
            index.add(vectors)


def photo_index(vectors: np.ndarray, config: IndexConfig | None = None) -> InnerProductIndex:
    """An index over photo vectors, its kind chosen by their number (``IndexConfig``,
    from the environment unless given)."""
    return InnerProductIndex(vectors, config or IndexConfig.from_env())


def save_index(writer: Any, name: str, index: InnerProductIndex) -> None:
    """A photo index into an artifact as built: an exact one as its vectors (``name``), an
    approximate one in FAISS's own format (``name``_faiss, bytes; no pickle) with its
    tuning, so that loading trains nothing. kNN, graph and semantic index the same photos
    of a community: identical arrays, stored once (shared/artifacts.py's aliases)."""
    if index.kind == "flat":
        writer.array(name, index.vectors)
        return
    stored = index.__dict__.get("_stored")
    if stored is not None:  # read in place from a file of FAISS's bytes: copied from it
        writer.array(f"{name}_faiss", stored)
    else:
        # FAISS writes it to the file a MiB at a time: serialize_index's copy of it in memory
        # (0.5 GB at 100,000 photos) was the training driver's peak while it wrote the model
        writer.bytes_array(f"{name}_faiss", lambda out: faiss.write_index(
            index.faiss_index, faiss.PyCallbackIOWriter(out.write)))
    writer.json(f"{name}_index", {"kind": index.kind, "setting": index.setting,
                                  "recall": index.recall, "built_size": index.built_size})


def load_index(reader: Any, name: str) -> InnerProductIndex:
    """``save_index``'s index; an exact one is made over its vectors (a copy, no training),
    an approximate one read in place from its file (``mapped_faiss_index``). The methods
    that load the same stored array through one reader (an alias hands every name one
    array) share one index: kept on the reader, so it goes when the reader and the
    methods do."""
    root = getattr(reader, "reader", reader)  # a ScopedReader's ArtifactReader
    loaded: dict[int, tuple[np.ndarray, InnerProductIndex]] = root.__dict__.setdefault(
        "_photo_indexes", {})
    stored = reader.mapped(f"{name}_faiss") if reader.has(f"{name}_faiss.npy") \
        else reader.array(name)
    if id(stored) in loaded and loaded[id(stored)][0] is stored:
        return loaded[id(stored)][1]
    if reader.has(f"{name}_faiss.npy"):
        index = InnerProductIndex.from_faiss(mapped_faiss_index(stored),
                                             reader.json(f"{name}_index"))
        index._stored = stored
    else:
        index = photo_index(stored)
    loaded[id(stored)] = (stored, index)  # the array held: its id is not reused meanwhile
    return index


def mapped_faiss_index(stored: np.ndarray) -> faiss.Index:
    """The FAISS index whose bytes are ``stored`` (a read-only file map), reading its
    vectors and lists in place: the recommender, word and graph services map one model's
    index and share its pages (5.2 GB at a million photos), where each read its own copy.
    A model version never changes once published (a new one is a new folder): its
    checksums were verified at load, and a file changed under the map would answer
    unverified. The index keeps the map alive; FAISS aborts the process on a write to it
    (``add`` copies it first). Its pages are mapped as searches first touch them: mapping
    them all at load (MADV_POPULATE_READ) did not bring the kNN's scores at a million
    photos closer to a copy's (bench/million_photos.py as of 522dd39, 500 photos in
    turns, two runs, p50 / p99 ms: populated 1.59 / 2.34 and 1.73 / 3.16, unpopulated
    1.55 / 2.20 and 1.62 / 2.74, copied 1.54 / 2.25 and 1.54 / 2.32)."""
    if stored.dtype != np.uint8 or stored.ndim != 1:
        raise ValueError(f"a stored FAISS index is a 1-D uint8 array, got {stored.dtype} "
                         f"{stored.shape}")
    index = faiss.read_index(faiss.ZeroCopyIOReader(faiss.swig_ptr(stored), stored.nbytes))
    faiss.add_to_referenced_objects(index, stored)
    return index


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth``'s ids that ``found``'s row holds."""
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t)
                          for f, t in zip(found, truth, strict=True)]))


def _tuned(index: faiss.Index, set_knob, knobs: tuple[int, ...], vectors: np.ndarray,
           config: IndexConfig) -> tuple[int, float]:
    """The smallest knob whose recall@10 reaches the target, and that recall. The queries
    are some of the data's own vectors; each one's own row is left out of both answers,
    so recall counts the neighbours a new photo like it would get."""
    rng = np.random.default_rng(config.seed + 1)
    rows = np.sort(rng.choice(len(vectors), min(TUNING_QUERIES, len(vectors)),
                              replace=False))
    queries = vectors[rows]
    # brute force over the array itself: no second copy of the vectors in memory
    truth = _without_self(faiss.knn(queries, vectors, 11, faiss.METRIC_INNER_PRODUCT)[1],
                          rows)
    recall = 0.0
    for knob in knobs:
        set_knob(knob)
        recall = recall_at_10(_without_self(index.search(queries, 11)[1], rows), truth)
        if recall >= config.recall_target:
            break
    return knob, recall


def _without_self(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's first 10 ids other than its own query's."""
    return np.stack([[i for i in found if i != row][:10] for found, row in
                     zip(ids, rows, strict=True)])
