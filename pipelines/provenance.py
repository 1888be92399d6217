"""Provenance: which code built a version (the manifest's `code_version`). The recipe's own fingerprint is
`RecipeConfig.config_hash()` (pipelines/config.py)."""
from __future__ import annotations

import subprocess
from pathlib import Path


def code_version() -> str:
    """errata's package version, plus the git commit (and `.dirty` for uncommitted changes to tracked files) when
    the code runs from a checkout."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("errata")
    except PackageNotFoundError:
        v = "0+unknown"
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            return f"{v}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return v
