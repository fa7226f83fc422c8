"""Configuration read from the environment, once, in one place."""

from __future__ import annotations

import logging
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Where the shipped data sets live; a user points this at their own copy.
DATA_ROOT_ENV = "HASHREC_DATA_ROOT"
#: Where trained models and computed features are written.
MODELS_ENV = "HASHREC_MODELS"
LOG_LEVEL_ENV = "HASHREC_LOG_LEVEL"
#: "json": one JSON object a line (time, level, logger, message), for log collectors;
#: anything else: plain text
LOG_FORMAT_ENV = "HASHREC_LOG_FORMAT"


def data_root() -> Path:
    """The data directory: $HASHREC_DATA_ROOT, else ../shared/data beside the repository."""
    configured = os.environ.get(DATA_ROOT_ENV)
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


def models_dir() -> Path:
    configured = os.environ.get(MODELS_ENV)
    return Path(configured) if configured else REPO_ROOT / "models"


def setup_logging(level: str | None = None) -> None:
    """One logging format for every command and service."""
    level = (level or os.environ.get(LOG_LEVEL_ENV, "INFO")).upper()
    if os.environ.get(LOG_FORMAT_ENV, "").lower() == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # gensim logs every lifecycle event and progress tick at INFO; our own logs say enough.
    logging.getLogger("gensim").setLevel(logging.WARNING)
    # faiss logs which CPU build it tried at every import; a clear error should stand alone.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


class AtMostEvery(logging.Filter):
    """Lets a message through at most once every ``seconds`` for each template and its
    first two arguments (a backend and its status, say); the next one let through says
    how many like it were held back. A backend that is down fails every call, and its
    logs must not drown everything else."""

    def __init__(self, seconds: float = 10.0) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[tuple, float] = {}
        self._held: dict[tuple, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        import time

        args = record.args if isinstance(record.args, tuple) else ()
        # repr: an argument may be a list, which a dict key cannot be
        key, now = (record.msg, *map(repr, args[:2])), time.monotonic()
        if now - self._last.get(key, -self.seconds) < self.seconds:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in {self.seconds:g} s)"
        return True


def env_int(name: str, default: int | str) -> int:
    """$name as a whole number (a port, a count), ``default`` when unset or blank."""
    return int(env_number(name, int(default), int))


def env_port(name: str, default: int | str) -> int:
    """$name as a TCP port (0: any free one); a number outside 0-65535 is refused, where
    the socket layer would silently take it modulo 65536."""
    port = env_int(name, default)
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} must be a port from 0 to 65535, got {port}")
    return port


def required_env(name: str, what: str) -> str:
    """$name, which must be set: ``what`` says what it names, for the operator's one line."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise ValueError(f"{name} is not set: it names {what}")
    return value


def env_number(name: str, default: float, kind: type = float) -> float:
    """$name as a ``kind`` (int or float), ``default`` when unset or blank; a value that is
    not a number is refused with the variable's name."""
    raw = os.environ.get(name, "").strip()
    try:
        return kind(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


FIT_SAMPLE_ENV = "HASHREC_FIT_SAMPLE"
#: the most training photos whose out-of-fold scores fit the fusions, and that fit the
#: community gate and the semantic method's four weights (a sample of a larger
#: collection, seeded). The fusions fit on 1,000 of
#: 1,758 photos validated as well as on all (bench/fit_sample.py); each sampled photo
#: costs the driver 2 × 7 methods × V × 4 B of scores (95 KB at 1,688 hashtags), and
#: the linear fusion's normalised copy of them. 3,000: the shipped photos (2,794) are
#: all used, as the default model was measured
DEFAULT_FIT_SAMPLE = 3_000


FIT_PASSES_ENV = "HASHREC_FIT_PASSES"


def fit_passes_limit() -> int | None:
    """$HASHREC_FIT_PASSES, the most passes over the training photos an iterative fit
    makes (the MLP's and AutoRec's epochs, DeepWalk's walks from each node and its
    skip-gram's epochs); None when unset: each method's own. For smoke runs and memory
    measurements: a fit's model has the same shape whatever its passes, not its quality."""
    raw = os.environ.get(FIT_PASSES_ENV, "").strip()
    if not raw:
        return None
    passes = env_int(FIT_PASSES_ENV, 0)
    if passes < 1:
        raise ValueError(f"{FIT_PASSES_ENV} must be at least 1, got {raw!r}")
    return passes


def fit_sample_limit() -> int:
    """$HASHREC_FIT_SAMPLE (at least 100)."""
    limit = env_int(FIT_SAMPLE_ENV, DEFAULT_FIT_SAMPLE)
    if limit < 100:
        raise ValueError(f"{FIT_SAMPLE_ENV} must be at least 100, got {limit}")
    return limit

