"""Readers for every data set format hashrec trains on, into one `Post` record.

A data set is named by a spec ``FORMAT:PATH``:

- ``harrison:DIR``  data_list.txt + tag_list.txt (+ vocab_index.txt), aligned lines.
- ``dcmr:DIR``      img_database.txt, txt_database.txt, one ``*_label.txt`` (aligned lines)
                    and label_names.txt — the cross-modal layout (MIRFlickr, NUS-WIDE, ...).
- ``instagram:DIR`` posts.jsonl as collected from Instagram.
- ``food:DIR``      images/NAME + tags/NAME.txt (comma-separated tags).
- ``howyoutag:PATH`` #HowYouTagTweets: a ``.csv`` file, or a folder (every ``.csv`` in it,
                    by name), one tweet a line, tab-separated: the text (lemmatised,
                    hashtags removed), the user id, then one field per hashtag. A user's
                    lines keep their file order, which is their time order.
- ``jsonl:FILE``    hashrec's own format, one post a line::

      {"id": "p1", "image": "photos/p1.jpg", "hashtags": ["#beach", "sunset"],
       "labels": ["sea"], "user": "u42", "time": "2024-05-01T12:00:00Z"}

  ``hashtags`` is required; ``id`` defaults to the line number; ``image`` is relative to
  the file's folder; ``labels``, ``user`` and ``time`` (ISO 8601 or Unix seconds) are optional.

A malformed file raises `DataFormatError` naming the file and line. Hashtags are returned
as written; `shared.data.normalize` turns them into vocabulary terms.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shared.config import data_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Post:
    """One photo post: what every model trains on."""

    id: str
    image: Path | None
    hashtags: tuple[str, ...]
    labels: tuple[str, ...] | None = None
    user: str | None = None
    time: datetime | None = None
    #: the post's words, for text content (howyoutag's tweets)
    text: str | None = None


class DataFormatError(ValueError):
    """A data file does not have the layout its format promises."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = path, line, problem


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataFormatError(path, None, "file is missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise DataFormatError(path, line, "not valid UTF-8") from error
    return text.splitlines()


def _require_aligned(files: dict[Path, list[str]]) -> int:
    lengths = {path: len(lines) for path, lines in files.items()}
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{path.name}: {n}" for path, n in lengths.items())
        shortest = min(lengths, key=lengths.__getitem__)
        raise DataFormatError(shortest, lengths[shortest] + 1,
                              f"files must have aligned lines ({detail})")
    return next(iter(lengths.values()))


def _image_or_none(path: Path) -> Path | None:
    return path if path.is_file() else None


def read_harrison(directory: Path) -> Iterator[Post]:
    """HARRISON: image paths and space-separated hashtags; the images are not shipped."""
    data_path, tag_path = directory / "data_list.txt", directory / "tag_list.txt"
    images, tag_lines = _read_lines(data_path), _read_lines(tag_path)
    _require_aligned({data_path: images, tag_path: tag_lines})
    for number, (image, tags) in enumerate(zip(images, tag_lines, strict=True), start=1):
        image = image.strip()
        if not image:
            raise DataFormatError(data_path, number, "empty image path")
        yield Post(id=image, image=_image_or_none(directory / image),
                   hashtags=tuple(tags.split()))


def read_dcmr(directory: Path) -> Iterator[Post]:
    """The cross-modal layout: image list, raw tags, binary label rows, label names."""
    label_files = sorted(directory.glob("*_label.txt"))
    if len(label_files) != 1:
        raise DataFormatError(directory / "*_label.txt", None,
                              f"expected exactly one label file, found {len(label_files)}")
    names_path = directory / "label_names.txt"
    label_names = [name.strip() for name in _read_lines(names_path) if name.strip()]
    image_path, text_path, label_path = (directory / "img_database.txt",
                                         directory / "txt_database.txt", label_files[0])
    images, texts, label_rows = (_read_lines(image_path), _read_lines(text_path),
                                 _read_lines(label_path))
    _require_aligned({image_path: images, text_path: texts, label_path: label_rows})
    for number, (image, text, row) in enumerate(zip(images, texts, label_rows, strict=True),
                                                start=1):
        fields = row.split()
        if len(fields) != len(label_names):
            raise DataFormatError(label_path, number, f"expected {len(label_names)} label "
                                  f"columns (label_names.txt), found {len(fields)}")
        try:
            values = [float(field) for field in fields]
        except ValueError as error:
            raise DataFormatError(label_path, number, f"label values must be 0 or 1: {error}")\
                from error
        if any(value not in (0.0, 1.0) for value in values):
            raise DataFormatError(label_path, number, "label values must be 0 or 1")
        image = image.strip()
        if not image:
            raise DataFormatError(image_path, number, "empty image path")
        yield Post(id=image, image=_image_or_none(directory / image),
                   hashtags=tuple(text.split()),
                   labels=tuple(name for name, value in zip(label_names, values, strict=True)
                                if value == 1.0))


def _parse_time(value: object, path: Path, number: int) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, tz=UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        raise TypeError
    except (TypeError, ValueError, OverflowError, OSError) as error:
        raise DataFormatError(path, number, f"time must be ISO 8601 or Unix seconds, "
                              f"got {value!r}") from error


def _string_list(record: dict, field: str, path: Path, number: int) -> tuple[str, ...]:
    value = record[field]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DataFormatError(path, number, f"'{field}' must be a list of strings")
    return tuple(value)


def _json_records(path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(path, number, f"invalid JSON: {error.msg}") from error
        if not isinstance(record, dict):
            raise DataFormatError(path, number, "each line must be a JSON object")
        yield number, record


def read_jsonl(path: Path) -> Iterator[Post]:
    """hashrec's own format (module docstring)."""
    for number, record in _json_records(path):
        if "hashtags" not in record:
            raise DataFormatError(path, number, "missing required field 'hashtags'")
        hashtags = _string_list(record, "hashtags", path, number)
        labels = _string_list(record, "labels", path, number) if "labels" in record else None
        image = record.get("image")
        if image is not None and not isinstance(image, str):
            raise DataFormatError(path, number, "'image' must be a path string")
        user = record.get("user")
        if user is not None and not isinstance(user, str | int):
            raise DataFormatError(path, number, "'user' must be a string")
        yield Post(id=str(record.get("id", number)),
                   image=(path.parent / image) if image else None,
                   hashtags=hashtags, labels=labels,
                   user=str(user) if user is not None else None,
                   time=_parse_time(record.get("time"), path, number))


def read_instagram(directory: Path) -> Iterator[Post]:
    """Instagram posts as collected: image, hashtags with '#', shortcode, created_utc."""
    path = directory / "posts.jsonl"
    for number, record in _json_records(path):
        for field in ("image", "hashtags", "shortcode"):
            if field not in record:
                raise DataFormatError(path, number, f"missing required field '{field}'")
        yield Post(id=str(record["shortcode"]), image=directory / record["image"],
                   hashtags=_string_list(record, "hashtags", path, number),
                   time=_parse_time(record.get("created_utc"), path, number))


def read_food(directory: Path) -> Iterator[Post]:
    """Food photos: images/NAME with tags/NAME.txt holding comma-separated tags."""
    tag_dir = directory / "tags"
    if not tag_dir.is_dir():
        raise DataFormatError(tag_dir, None, "folder is missing")
    for tag_path in sorted(tag_dir.glob("*.txt")):
        lines = _read_lines(tag_path)
        tags = tuple(tag.strip() for line in lines for tag in line.split(",") if tag.strip())
        image_name = tag_path.name.removesuffix(".txt")
        yield Post(id=image_name, image=_image_or_none(directory / "images" / image_name),
                   hashtags=tags)


def read_howyoutag(path: Path) -> Iterator[Post]:
    """#HowYouTagTweets (module docstring). Each post's ``time`` is its user's sequence
    number (seconds after the epoch), so that a per-user time-ordered split keeps the
    authors' order: earlier files first, then line order."""
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DataFormatError(path, None, "no .csv file in this folder")
    sequence: dict[str, int] = {}
    for file in files:
        for number, line in enumerate(_read_lines(file), start=1):
            fields = line.split("\t")
            if len(fields) < 3:
                raise DataFormatError(file, number, f"{len(fields)} tab-separated fields; "
                                      "expected the text, the user id and at least one "
                                      "hashtag")
            text, user, hashtags = fields[0].strip(), fields[1].strip(), fields[2:]
            if not user:
                raise DataFormatError(file, number, "the user id (second field) is empty")
            sequence[user] = sequence.get(user, 0) + 1
            yield Post(id=f"{file.stem}-{number}", image=None,
                       hashtags=tuple(h.strip() for h in hashtags if h.strip()), user=user,
                       time=datetime.fromtimestamp(sequence[user], tz=UTC), text=text)


READERS: dict[str, Callable[[Path], Iterator[Post]]] = {
    "harrison": read_harrison,
    "dcmr": read_dcmr,
    "instagram": read_instagram,
    "food": read_food,
    "jsonl": read_jsonl,
    "howyoutag": read_howyoutag,
}


@dataclass(frozen=True)
class DatasetSpec:
    format: str
    path: Path

    def __str__(self) -> str:
        return f"{self.format}:{self.path}"


def parse_spec(spec: str, root: Path | None = None) -> DatasetSpec:
    """``FORMAT:PATH``; a PATH that does not exist as given is looked up under the data root."""
    fmt, sep, raw_path = spec.partition(":")
    if not sep or not raw_path:
        raise ValueError(f"data set spec {spec!r} must be FORMAT:PATH, "
                         f"FORMAT one of {', '.join(READERS)}")
    if fmt not in READERS:
        raise ValueError(f"unknown data set format {fmt!r} in {spec!r}; "
                         f"known: {', '.join(READERS)}")
    path = Path(raw_path).expanduser()
    if not path.exists() and not path.is_absolute():
        under_root = (root or data_root()) / path
        if under_root.exists():
            path = under_root
    if not path.exists():
        raise FileNotFoundError(f"data set {spec!r}: {path} does not exist "
                                f"(data root: {root or data_root()})")
    return DatasetSpec(fmt, path)


def read_posts(spec: str | DatasetSpec, root: Path | None = None) -> list[Post]:
    """Every post of a data set, in file order."""
    parsed = spec if isinstance(spec, DatasetSpec) else parse_spec(spec, root)
    posts = list(READERS[parsed.format](parsed.path))
    log.info("read %d posts from %s", len(posts), parsed)
    return posts
