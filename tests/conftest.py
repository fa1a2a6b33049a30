"""Shared helpers: tiny feeds generated once per test session."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import generate_data  # noqa: E402

TINY = ["--days", "3", "--base-rows", "3000", "--daily-rows", "300", "--seed", "7"]


def generate(out: Path, *options: str) -> Path:
    """Run generate_data.main in this process (quietly) and return the output folder."""
    assert generate_data.main(["--out", str(out), "--quiet", *options]) == 0
    return out


def read_csv_bytes(archive: Path) -> bytes:
    """The one member of a day archive, checked to be the only one and correctly named."""
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert names == [archive.stem + ".csv"]
        return zf.read(names[0])


@pytest.fixture(scope="session")
def tiny_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 clients x 3 days, 3,000 + 300 rows, seed 7: what the contract smoke run uses."""
    return generate(tmp_path_factory.mktemp("tiny") / "data", *TINY)


@pytest.fixture(scope="session")
def medium_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough for distribution checks: 50,000 + 5,000 rows, 10% late rows."""
    return generate(
        tmp_path_factory.mktemp("medium") / "data",
        *["--days", "4", "--base-rows", "50000", "--daily-rows", "5000"],
        *["--seed", "11", "--late-fraction", "0.1"],
    )
