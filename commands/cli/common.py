"""What several of the ``hashrec`` command groups share: tables, JSON reports, the newest
model, the pid file's name."""

from __future__ import annotations

import json
from pathlib import Path

#: where `hashrec serve` writes its pid under $HASHREC_MODELS, for `hashrec rollout`
PID_FILE = "serve.pid"
TASKS = ("h2l", "l2h", "ks", "image2tag", "user", "retrieval", "served")


def _print_table(title: str, results: dict[str, dict[str, float]],
                 seconds: dict[str, float] | None = None) -> None:
    columns = list(next(iter(results.values())))
    width = max(20, *(len(method) + 2 for method in results))
    header = f"{'method':<{width}}" + "".join(f"{c:>9}" for c in columns)
    if seconds:
        header += f"{'seconds':>10}"
    print(title)
    print(header)
    print("-" * len(header))
    for method, row in results.items():
        line = f"{method:<{width}}" + "".join(f"{row[c]:>9.2f}" for c in columns)
        if seconds:
            line += f"{seconds.get(method, 0.0):>10.1f}"
        print(line)


def _write_json(path: Path | None, report: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def newest_model(root: Path) -> Path | None:
    """The most recent `hashrec train` output under ``root``."""
    from services.image_models import KIND
    from shared.artifacts import newest_artifact

    return newest_artifact(root, KIND, verified=True)


def _ignored_tags(text: str) -> frozenset[str]:
    """--ignore-tags "A,B,..." as normalised hashtags ("#Food" and "food" are one)."""
    from shared.data.normalize import normalize_hashtag

    return frozenset(filter(None, (normalize_hashtag(t) for t in text.split(",") if t.strip())))
