"""Locate and load the shared RFC test-vector files (one place for the path, clear failure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def vectors_dir() -> Path:
    """`shared/vectors` beside the repository (/work/shared/vectors; CI clones shared/ there)."""
    return Path(__file__).resolve().parents[3] / "shared" / "vectors"


def load_vectors(file_name: str) -> Any:
    """Parsed JSON of `file_name`, or a test failure naming the path that was looked up."""
    path = vectors_dir() / file_name
    if not path.is_file():
        pytest.fail(f"test vectors not found at {path}: clone shared/ beside the repository")
    with path.open(encoding="utf-8") as f:
        return json.load(f)
