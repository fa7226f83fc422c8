"""Versioned model artifacts: plain arrays (.npy, no pickle) and JSON, with a manifest of
sha256 checksums that is verified before anything is served.

    writer = ArtifactWriter(directory)
    writer.array("knn/features", features); writer.json("vocabulary", terms)
    writer.close(metadata)                       # writes manifest.json
    reader = ArtifactReader(directory)           # verifies every checksum first
    reader.array("knn/features"); reader.json("vocabulary")

An array whose bytes the artifact already holds is stored once: its name becomes an alias
of the first file (manifest ``aliases``), and a reader hands every name of that file the
same read-only array. kNN, the graph and the semantic method each keep a community's
photo features (the same unit vectors): one file and one copy in memory, where there were
three.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shared.embeddings import sha256_file

MANIFEST = "manifest.json"
#: arrays at least this large are stored once whatever names they are written under
#: (smaller ones are not worth an alias in the manifest)
SHARED_MIN_BYTES = 1 << 16
log = logging.getLogger(__name__)


class _HashingFile:
    """A file to write whose bytes are hashed (sha256) and counted on their way."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.digest, self.size = file, hashlib.sha256(), 0

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        return self.file.write(data)


class _Counted:
    """A file to write that keeps nothing but the number of bytes written to it."""

    size = 0

    def write(self, data: bytes | memoryview) -> int:
        written = memoryview(data).nbytes
        self.size += written
        return written


def file_blocks(array: np.ndarray, block: int = 16 << 20) -> Iterator[bytes] | None:
    """The bytes of a read-only file map (np.memmap, np.load(mmap_mode="r")) read from its
    file ``block`` bytes at a time, when they are exactly the array's (C order, to the
    file's end); None for any other array. Read, not touched through the map: pages
    touched through a map count in the process's resident memory until it goes (the
    training driver's peak at 100,000 photos, writing the features of a spill file)."""
    if not (isinstance(array, np.memmap) and array.filename is not None
            and array.flags.c_contiguous
            and os.path.getsize(array.filename) - array.offset == array.nbytes):
        return None

    def blocks() -> Iterator[bytes]:
        with open(array.filename, "rb") as stored:
            stored.seek(array.offset)
            while data := stored.read(block):
                yield data

    return blocks()


class ArtifactWriter:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: dict[str, str] = {}
        self.aliases: dict[str, str] = {}  # name → the file that holds the same bytes
        self._by_digest: dict[str, str] = {}
        #: the name each file map was first written under, by its file, offset, size, dtype
        #: and shape: kNN, graph and semantic hand over one index's map, read once, not thrice
        self._by_region: dict[tuple, str] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def _record(self, path: Path) -> None:
        self.files[path.relative_to(self.directory).as_posix()] = sha256_file(path)

    def array(self, name: str, value: np.ndarray) -> None:
        """``value`` as ``name``.npy, streamed to the file through its digest (numpy writes
        a large array 16 MiB at a time): no copy of it is made in memory; a file map's
        bytes are read from its file (``file_blocks``), the same .npy as numpy's."""
        blocks = file_blocks(value)
        if blocks is None:
            self._stored(name, lambda out: np.save(out, np.asarray(value), allow_pickle=False))
            return
        relative = f"{name}.npy"
        region = (os.path.realpath(value.filename), value.offset, value.nbytes,
                  value.dtype.str, value.shape)
        first = self._by_region.get(region)
        if first is not None and value.nbytes >= SHARED_MIN_BYTES:
            self._unwritten(relative)
            self.aliases[relative] = first
            return

        def copied(out: _HashingFile) -> None:
            np.lib.format.write_array_header_1_0(
                out, np.lib.format.header_data_from_array_1_0(value))
            for data in blocks:
                out.write(data)

        self._stored(name, copied)
        self._by_region[region] = self.aliases.get(relative, relative)  # a file's name

    def bytes_array(self, name: str, produce: Callable[[BinaryIO], Any]) -> None:
        """The bytes ``produce(file)`` writes, as ``name``.npy: a uint8 array, the same file
        as ``array`` of those bytes would be. ``produce`` runs twice, into a counter first
        (the header needs their length), then into the file, and must write the same
        bytes both times: a writer that streams (FAISS writing an index) never has them in
        memory at once, and they reach the disk once."""
        counted = _Counted()
        produce(counted)

        def framed(out: _HashingFile) -> None:
            np.lib.format.write_array_header_1_0(out, {
                "descr": "|u1", "fortran_order": False, "shape": (counted.size,)})
            before = out.size
            produce(out)
            if out.size - before != counted.size:
                raise ValueError(f"{name}: wrote {out.size - before} bytes, counted "
                                 f"{counted.size} the first time")

        self._stored(name, framed)

    def _unwritten(self, relative: str) -> None:
        if relative in self.files or relative in self.aliases:
            # an alias of it, or the digest's first name, would name bytes since replaced
            raise ValueError(f"{self.directory}: {relative} written twice")

    def _stored(self, name: str, write: Callable[[BinaryIO], Any]) -> None:
        relative = f"{name}.npy"
        self._unwritten(relative)
        path = self.directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with partial.open("wb") as file:
                hashing = _HashingFile(file)
                write(hashing)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        digest, size = hashing.digest.hexdigest(), hashing.size
        first = self._by_digest.get(digest)
        if first is not None and first != relative and size >= SHARED_MIN_BYTES:
            partial.unlink()
            self.aliases[relative] = first
            return
        partial.replace(path)
        self.files[relative] = digest
        self._by_digest.setdefault(digest, relative)

    def json(self, name: str, value: Any) -> None:
        path = self.directory / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, ensure_ascii=False))
        self._record(path)

    def scoped(self, prefix: str) -> ScopedWriter:
        """A writer whose names all start with ``prefix/``: one model's files under its
        own folder, written by code that names them as if alone."""
        return ScopedWriter(self, prefix)

    def close(self, metadata: dict[str, Any], durable: bool = False) -> Path:
        """Writes the manifest; ``durable``: every file and folder reaches the disk
        (fsync) before this returns, as a rename that publishes the directory needs."""
        path = self.directory / MANIFEST
        shared = {"aliases": self.aliases} if self.aliases else {}
        path.write_text(json.dumps({**metadata, "files": self.files, **shared},
                                   ensure_ascii=False, indent=1))
        if durable:
            for name in (*self.files, MANIFEST):
                with (self.directory / name).open("rb") as written:
                    os.fsync(written.fileno())
            folders = {(self.directory / name).parent for name in self.files}
            for folder in sorted(folders | {self.directory}, reverse=True):
                fsync_directory(folder)
        return path


class ScopedWriter:
    def __init__(self, writer: ArtifactWriter, prefix: str) -> None:
        self.writer, self.prefix = writer, prefix

    def array(self, name: str, value: np.ndarray) -> None:
        self.writer.array(f"{self.prefix}/{name}", value)

    def bytes_array(self, name: str, produce: Callable[[BinaryIO], Any]) -> None:
        self.writer.bytes_array(f"{self.prefix}/{name}", produce)

    def json(self, name: str, value: Any) -> None:
        self.writer.json(f"{self.prefix}/{name}", value)

    def scoped(self, prefix: str) -> ScopedWriter:
        return ScopedWriter(self.writer, f"{self.prefix}/{prefix}")


class ScopedReader:
    """ArtifactReader's view of the files under ``prefix/``."""

    def __init__(self, reader: ArtifactReader, prefix: str) -> None:
        self.reader, self.prefix = reader, prefix
        self.directory = reader.directory
        self.manifest = reader.manifest

    def array(self, name: str) -> np.ndarray:
        return self.reader.array(f"{self.prefix}/{name}")

    def mapped(self, name: str) -> np.ndarray:
        return self.reader.mapped(f"{self.prefix}/{name}")

    def json(self, name: str) -> Any:
        return self.reader.json(f"{self.prefix}/{name}")

    def has(self, name: str) -> bool:
        return self.reader.has(f"{self.prefix}/{name}")

    def scoped(self, prefix: str) -> ScopedReader:
        return ScopedReader(self.reader, f"{self.prefix}/{prefix}")


def fsync_directory(directory: Path) -> None:
    """Makes the names in ``directory`` (files created, renamed, removed) durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class ArtifactReader:
    """Opens a written artifact directory; every file is checked against the manifest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{directory}: no {MANIFEST}; not a model directory")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{manifest_path}: not valid JSON ({error}); a model written "
                             "half-way, or damaged") from None
        if not isinstance(self.manifest, dict) or not isinstance(
                self.manifest.get("files"), dict) or not isinstance(
                self.manifest.get("aliases", {}), dict):
            raise ValueError(f"{manifest_path}: no \"files\" (or \"aliases\") mapping; a "
                             "model written half-way, or damaged")
        for name, digest in self.manifest["files"].items():
            path = directory / name
            if not path.is_file():
                raise ValueError(f"{path}: listed in the manifest but missing")
            if sha256_file(path) != digest:
                raise ValueError(f"{path}: checksum does not match the manifest")
        self.aliases: dict[str, str] = self.manifest.get("aliases", {})
        for name, target in self.aliases.items():
            if not isinstance(target, str) or target not in self.manifest["files"] \
                    or name in self.manifest["files"]:
                raise ValueError(f"{directory / MANIFEST}: {name} is an alias of {target}, "
                                 "which the manifest does not list, or a file of its own")
        self._shared_files = set(self.aliases.values())
        self._shared: dict[str, np.ndarray] = {}
        self._mapped: dict[str, np.ndarray] = {}

    def _path(self, name: str, suffix: str) -> Path:
        relative = f"{name}{suffix}"
        relative = self.aliases.get(relative, relative)
        if relative not in self.manifest["files"]:
            raise KeyError(f"{name}{suffix} is not in {self.directory / MANIFEST}")
        return self.directory / relative

    def array(self, name: str) -> np.ndarray:
        """The array; one that several names share is read once and handed to each of
        them read-only."""
        path = self._path(name, ".npy")
        relative = path.relative_to(self.directory).as_posix()
        if relative not in self._shared_files:
            return np.load(path, allow_pickle=False)
        if relative not in self._shared:
            array = np.load(path, allow_pickle=False)
            array.flags.writeable = False
            self._shared[relative] = array
        return self._shared[relative]

    def mapped(self, name: str) -> np.ndarray:
        """The array as a read-only map of its verified file, one map a file (names that
        alias one file get the same): its pages are the kernel's file cache, which every
        process reading the same model shares, not a copy of each process's own."""
        path = self._path(name, ".npy")
        relative = path.relative_to(self.directory).as_posix()
        if relative not in self._mapped:
            self._mapped[relative] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._mapped[relative]

    def has(self, name: str) -> bool:
        """Whether a file of that name (with its suffix) is in the manifest."""
        return name in self.manifest["files"] or name in self.aliases

    def scoped(self, prefix: str) -> ScopedReader:
        return ScopedReader(self, prefix)

    def arrays(self) -> list[str]:
        """The names of every array in the artifact."""
        return [name.removesuffix(".npy") for name in (*self.manifest["files"], *self.aliases)
                if name.endswith(".npy")]

    def json(self, name: str) -> Any:
        return json.loads(self._path(name, ".json").read_text())


def newest_artifact(root: Path, kind: str, verified: bool = False) -> Path | None:
    """The most recent artifact directory of ``kind`` directly under ``root`` (version
    names start with the time they were written), or None. ``verified``: the most recent
    whose every file matches its manifest; a newer one that does not is skipped with the
    reason logged (a tampered or half-copied version is never started on)."""
    candidates = []
    for path in root.glob(f"*/{MANIFEST}"):
        try:
            found = json.loads(path.read_text()).get("kind")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
            log.warning("%s skipped: its manifest is not valid JSON (%s)", path.parent, error)
            continue
        if found == kind:
            candidates.append(path.parent)
    for candidate in sorted(candidates, reverse=True):
        if not verified:
            return candidate
        try:
            ArtifactReader(candidate)
        except (OSError, ValueError) as error:
            log.warning("%s skipped: %s", candidate, error)
            continue
        return candidate
    return None


def resolve_artifact(path: Path, kind: str) -> Path:
    """``path`` itself when it is an artifact directory of ``kind`` (ValueError naming the
    kind it is when another), else the newest verified one of ``kind`` in it: deployments
    can point at a folder that training keeps adding versions to. ValueError naming why
    when the folder holds versions of ``kind`` and none verifies."""
    if (path / MANIFEST).is_file():
        try:
            found = json.loads((path / MANIFEST).read_text()).get("kind")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
            raise ValueError(f"{path}: its manifest is not valid JSON ({error})") from None
        if found != kind:
            raise ValueError(f"{path} is a {found!r} model, not {kind!r}")
        return path
    newest = newest_artifact(path, kind, verified=True)
    if newest is None:
        unverified = newest_artifact(path, kind)
        if unverified is not None:
            try:
                ArtifactReader(unverified)
            except (OSError, ValueError) as error:
                raise ValueError(f"{path}: no {kind} version verifies (the newest, "
                                 f"{unverified.name}: {error})") from None
        raise FileNotFoundError(f"{path}: neither a model directory nor a folder of {kind} "
                                "model directories")
    return newest
