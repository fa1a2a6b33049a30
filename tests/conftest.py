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


HEADER = (
    "transaction_id,transaction_date,sku_id,quantity_sold,revenue_usd,maturity_date,zip_code_raw"
)
HAND_ZIPS = {"94107": "CA", "90210": "CA", "10001": "NY", "00000": ""}
HAND_SKUS = {"SKU-1": "G1", "SKU-2": "G2", "SKU-3": "G1"}


def write_feed(data_dir: Path, days: list[list[str]], client: str = "client_1") -> Path:
    """Hand-written cumulative feed: day N's archive holds the rows of days 1..N."""
    static = data_dir / "static"
    static.mkdir(parents=True, exist_ok=True)
    (static / "us_zip_codes.csv").write_text(
        "zip_code,city,state,is_us\n"
        + "".join(f"{z},X,{s},{str(z != '00000').lower()}\n" for z, s in HAND_ZIPS.items())
    )
    (static / "sku_groups.csv").write_text(
        "sku_id,sku_group,category,is_high_priority\n"
        + "".join(f"{k},{g},C,false\n" for k, g in HAND_SKUS.items())
    )
    folder = data_dir / client
    folder.mkdir(parents=True, exist_ok=True)
    text = HEADER + "\n"
    for day, rows in enumerate(days, start=1):
        text += "".join(row + "\n" for row in rows)
        with zipfile.ZipFile(
            folder / f"transactions_day_{day}.zip", "w", zipfile.ZIP_DEFLATED
        ) as zf:
            zf.writestr(f"transactions_day_{day}.csv", text)
    return data_dir
