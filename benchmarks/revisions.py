"""Earlier commits' files, for the scripts that time this checkout against them."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export_tree(revision: str, into: Path, paths: tuple[str, ...] = ()) -> Path:
    """`paths` of `revision` (the whole tree when empty) extracted into `into`, from git."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, *paths], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into
