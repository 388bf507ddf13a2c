"""What the benchmark scripts share (imported by plain name: a script's own folder is on sys.path)."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_sha(short: bool = True) -> str:
    """The checkout's commit, to stamp a result with; "unknown" outside git."""
    try:
        return subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
