"""A model version's size on disk, and what its aliases (an array written twice, stored
once: shared/artifacts.py) would have cost as copies.

    python bench/artifact_size.py [MODEL_DIR]     default: the newest under $HASHREC_MODELS
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from commands.cli.common import newest_model
from shared.artifacts import MANIFEST
from shared.config import models_dir


def main(directory: Path) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    stored = sum((directory / name).stat().st_size for name in manifest["files"])
    aliases = manifest.get("aliases", {})
    spared = sum((directory / target).stat().st_size for target in aliases.values())
    print(f"{directory.name}: {stored / 1e6:.1f} MB in {len(manifest['files'])} files; "
          f"{len(aliases)} aliases spare {spared / 1e6:.1f} MB of copies "
          f"({spared / (stored + spared):.0%} of {(stored + spared) / 1e6:.1f} MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, nargs="?")
    model = parser.parse_args().model or newest_model(models_dir())
    if model is None:
        parser.error(f"no trained model under {models_dir()}")
    if not (model / MANIFEST).is_file():
        parser.error(f"{model}: not a model version (no {MANIFEST})")
    main(model)
