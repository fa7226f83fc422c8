"""Every reader on the real files, and on malformed copies of them."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.data.readers import DataFormatError, parse_spec, read_posts


def test_harrison_reads_every_aligned_line(data_dir: Path) -> None:
    posts = read_posts(f"harrison:{data_dir / 'harrison'}")
    assert len(posts) == 57_383
    assert posts[0].hashtags == ("sea", "instapic", "instagram", "trip", "travel")
    assert posts[0].image is None  # HARRISON ships no images
    assert all(p.labels is None and p.user is None for p in posts[:100])


def test_dcmr_reads_tags_labels_and_available_images(data_dir: Path) -> None:
    posts = read_posts(f"dcmr:{data_dir / 'mirflickr25k'}")
    lines = (data_dir / "mirflickr25k" / "img_database.txt").read_text().splitlines()
    assert len(posts) == len(lines)
    first = posts[0]
    assert first.hashtags[:3] == ("governorsisland", "cigarette", "tattoos")
    # Row 1 of mir_label.txt has columns 7, 14, 16, 19, 20 set (1-based), label_names order.
    assert first.labels == ("female", "people", "portrait", "sky", "structures")
    with_images = [p for p in posts if p.image is not None]
    assert 500 < len(with_images) < 700 and all(p.image.is_file() for p in with_images)


def test_dcmr_reader_reads_any_folder_laid_out_that_way(tmp_path: Path) -> None:
    (tmp_path / "img_database.txt").write_text("a.jpg\nb.jpg\n")
    (tmp_path / "txt_database.txt").write_text("sun beach\n\n")
    (tmp_path / "nus_label.txt").write_text("1 0\n0 1\n")
    (tmp_path / "label_names.txt").write_text("sea\nsky\n")
    posts = read_posts(f"dcmr:{tmp_path}")
    assert [(p.hashtags, p.labels) for p in posts] == [(("sun", "beach"), ("sea",)),
                                                       ((), ("sky",))]


def test_instagram_reads_hashtags_as_posted_and_time(data_dir: Path) -> None:
    posts = read_posts(f"instagram:{data_dir / 'instagram'}")
    assert len(posts) == 1_515
    first = posts[0]
    assert first.id == "By3oilGpkxt"
    assert first.hashtags == ("#happyrunner", "#petsofinstagram", "#animals")
    assert first.time == datetime(2019, 6, 18, 23, 18, 26, tzinfo=UTC)
    assert first.image is not None and first.image.is_file()


def test_food_reads_comma_separated_multi_word_tags(data_dir: Path) -> None:
    posts = read_posts(f"food:{data_dir / 'food'}")
    assert len(posts) == 811
    first = next(p for p in posts if p.id == "0000002.jpg")
    assert "cuba libre" in first.hashtags and "nachos" in first.hashtags
    assert first.image is not None and first.image.is_file()


def test_jsonl_reads_optional_user_time_labels(tmp_path: Path) -> None:
    path = tmp_path / "posts.jsonl"
    path.write_text(
        json.dumps({"id": "p1", "image": "x.jpg", "hashtags": ["#Beach"], "user": "u1",
                    "time": 1_700_000_000, "labels": ["sea"]}) + "\n\n"
        + json.dumps({"hashtags": ["ünïcode", "日本"]}) + "\n")
    first, second = read_posts(f"jsonl:{path}")
    assert (first.id, first.user, first.labels) == ("p1", "u1", ("sea",))
    assert first.image == tmp_path / "x.jpg"
    assert first.time == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert (second.id, second.hashtags, second.user, second.time) == \
        ("3", ("ünïcode", "日本"), None, None)


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("images", "attributions",
                                                                  "photos"))
    for path in target.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    target.chmod(0o755)
    return target


def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_malformed_dcmr_label_row_names_file_and_line(data_dir: Path, tmp_path: Path) -> None:
    copy = _copy(data_dir / "mirflickr25k", tmp_path / "mir")
    _replace_line(copy / "mir_label.txt", 7, "0.0 1.0")
    with pytest.raises(DataFormatError, match=r"mir_label\.txt:7: expected 24 label columns"):
        read_posts(f"dcmr:{copy}")


def test_dcmr_non_binary_label_is_rejected(data_dir: Path, tmp_path: Path) -> None:
    copy = _copy(data_dir / "mirflickr25k", tmp_path / "mir")
    _replace_line(copy / "mir_label.txt", 3, " ".join(["0.5"] * 24))
    with pytest.raises(DataFormatError, match=r"mir_label\.txt:3: label values must be 0 or 1"):
        read_posts(f"dcmr:{copy}")


def test_misaligned_dcmr_files_are_rejected(data_dir: Path, tmp_path: Path) -> None:
    copy = _copy(data_dir / "mirflickr25k", tmp_path / "mir")
    lines = (copy / "txt_database.txt").read_text().splitlines()
    (copy / "txt_database.txt").write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(DataFormatError, match="aligned lines"):
        read_posts(f"dcmr:{copy}")


def test_misaligned_harrison_files_are_rejected(data_dir: Path, tmp_path: Path) -> None:
    copy = _copy(data_dir / "harrison", tmp_path / "harrison")
    lines = (copy / "tag_list.txt").read_text().splitlines()
    (copy / "tag_list.txt").write_text("\n".join(lines[:100]) + "\n")
    with pytest.raises(DataFormatError, match=r"tag_list\.txt:101: files must have aligned"):
        read_posts(f"harrison:{copy}")


def test_broken_instagram_json_names_file_and_line(data_dir: Path, tmp_path: Path) -> None:
    copy = _copy(data_dir / "instagram", tmp_path / "ig")
    _replace_line(copy / "posts.jsonl", 12, '{"image": "a.jpg", "hashtags": ["#x"')
    with pytest.raises(DataFormatError, match=r"posts\.jsonl:12: invalid JSON"):
        read_posts(f"instagram:{copy}")


def test_instagram_post_without_hashtags_field_is_an_error(data_dir: Path,
                                                          tmp_path: Path) -> None:
    copy = _copy(data_dir / "instagram", tmp_path / "ig")
    _replace_line(copy / "posts.jsonl", 2, '{"image": "a.jpg", "shortcode": "x"}')
    with pytest.raises(DataFormatError, match=r"posts\.jsonl:2: missing required field"):
        read_posts(f"instagram:{copy}")


def test_food_tag_file_that_is_not_utf8_names_file_and_line(data_dir: Path,
                                                           tmp_path: Path) -> None:
    copy = _copy(data_dir / "food", tmp_path / "food")
    (copy / "tags" / "0000002.jpg.txt").write_bytes(b"pizza\ncheese,\xff\xfe\n")
    with pytest.raises(DataFormatError, match=r"0000002\.jpg\.txt:2: not valid UTF-8"):
        read_posts(f"food:{copy}")


@pytest.mark.parametrize(("line", "problem"), [
    ('{"hashtags": "beach"}', "'hashtags' must be a list of strings"),
    ('{"image": "a.jpg"}', "missing required field 'hashtags'"),
    ('{"hashtags": [], "time": "yesterday"}', "time must be ISO 8601"),
    ('["not", "an", "object"]', "each line must be a JSON object"),
    ('{"hashtags": [], "user": ["u"]}', "'user' must be a string"),
])
def test_malformed_jsonl_lines_are_named(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "posts.jsonl"
    path.write_text('{"hashtags": ["ok"]}\n' + line + "\n")
    with pytest.raises(DataFormatError) as error:
        read_posts(f"jsonl:{path}")
    assert str(error.value).startswith(f"{path}:2: ")
    assert problem in str(error.value)


def test_spec_resolves_under_the_configured_data_root(data_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("HASHREC_DATA_ROOT", str(data_dir))
    assert parse_spec("food:food").path == data_dir / "food"


@pytest.mark.parametrize(("spec", "message"), [
    ("mirflickr25k", "must be FORMAT:PATH"),
    ("parquet:x", "unknown data set format 'parquet'"),
    ("dcmr:/no/such/folder", "does not exist"),
])
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        parse_spec(spec)


def test_howyoutag_reads_every_tweet_with_its_user_in_file_order(data_dir: Path) -> None:
    posts = read_posts(f"howyoutag:{data_dir / 'howyoutag'}")
    assert len(posts) == 21226 + 6235 and len({p.user for p in posts}) == 2571
    first = posts[0]
    assert first.image is None and first.user == "458716389"
    assert first.text.startswith("rupee gain on fund inflow")
    assert first.hashtags == ("rupee", "gain", "india", "inflow", "economy", "budget")
    # A user's posts keep the authors' order: train.csv's lines, then valid.csv's.
    mine = [p for p in posts if p.user == first.user]
    assert [p.time for p in mine] == sorted(p.time for p in mine)
    assert mine[0].id.startswith("train-") and mine[-1].id.startswith("valid-")
    only_train = read_posts(f"howyoutag:{data_dir / 'howyoutag' / 'train.csv'}")
    assert len(only_train) == 21226


@pytest.mark.parametrize(("line", "message"), [
    ("just some text without tabs", "1 tab-separated fields"),
    ("text\t\tfood", "the user id (second field) is empty"),
    ("text\tu1", "2 tab-separated fields"),
])
def test_a_malformed_howyoutag_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    good = "a tweet about lunch\tu1\tfood\tlunch\n"
    (tmp_path / "tweets.csv").write_text(good + line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=re.escape(f"tweets.csv:2: {message}")):
        read_posts(f"howyoutag:{tmp_path}")


def test_a_howyoutag_folder_without_csv_files_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"no \.csv file in this folder"):
        read_posts(f"howyoutag:{tmp_path}")
