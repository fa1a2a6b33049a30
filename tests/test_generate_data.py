"""The feed generator against docs/spec.md section 1."""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT, TINY, generate, read_csv_bytes

import generate_data

HEADER = (
    "transaction_id,transaction_date,sku_id,quantity_sold,revenue_usd,maturity_date,zip_code_raw"
)
START = dt.date(2025, 10, 1)


def archive(feed: Path, client: int, day: int) -> Path:
    return feed / f"client_{client}" / f"transactions_day_{day}.zip"


def day_frame(feed: Path, client: int, day: int) -> pl.DataFrame:
    """Day archive as strings, exactly as written."""
    raw = read_csv_bytes(archive(feed, client, day))
    return pl.read_csv(io.BytesIO(raw), infer_schema=False)


def new_rows(feed: Path, client: int, day: int) -> pl.DataFrame:
    """Rows that day `day` appended."""
    before = 0 if day == 1 else day_frame(feed, client, day - 1).height
    return day_frame(feed, client, day).slice(before)


def all_files(feed: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(feed)): p.read_bytes() for p in sorted(feed.rglob("*")) if p.is_file()
    }


# --- determinism and layout ----------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tiny_feed, tmp_path):
    again = generate(tmp_path / "again", *TINY)
    assert all_files(again) == all_files(tiny_feed)
    other = generate(tmp_path / "other", *TINY[:-1], "8")
    differing = [
        name
        for name, data in all_files(other).items()
        if name.startswith("client_") and data != all_files(tiny_feed)[name]
    ]
    assert len(differing) == 6  # every archive of both clients


def test_layout_matches_the_spec(tiny_feed):
    names = sorted(str(p.relative_to(tiny_feed)) for p in tiny_feed.rglob("*") if p.is_file())
    expected = ["static/sku_groups.csv", "static/us_zip_codes.csv"] + [
        f"client_{c}/transactions_day_{d}.zip" for c in (1, 2) for d in (1, 2, 3)
    ]
    assert names == sorted(expected)


def test_rerun_with_fewer_days_rewrites_the_same_prefix_and_drops_later_days(tiny_feed, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(tiny_feed, out)
    generate(out, *TINY[2:], "--days", "2")
    assert not archive(out, 1, 3).exists() and not archive(out, 2, 3).exists()
    for c in (1, 2):
        for d in (1, 2):
            assert archive(out, c, d).read_bytes() == archive(tiny_feed, c, d).read_bytes()


# --- the archives ---------------------------------------------------------------------------


def test_each_day_extends_the_previous_byte_for_byte(tiny_feed):
    for c in (1, 2):
        previous = b""
        for d in (1, 2, 3):
            current = read_csv_bytes(archive(tiny_feed, c, d))
            assert current.startswith(previous) and len(current) > len(previous)
            previous = current


def test_deflate_stream_equals_a_one_shot_compression(tiny_feed):
    # Archives read like ordinary zipfile output: same bytes as compressing the CSV at once.
    path = archive(tiny_feed, 1, 3)
    csv = read_csv_bytes(path)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
    assert info.compress_type == zipfile.ZIP_DEFLATED
    assert zlib.crc32(csv) == info.CRC
    assert (compressor.compress(csv) + compressor.flush()) in path.read_bytes()


def test_header_and_column_formats(tiny_feed):
    raw = read_csv_bytes(archive(tiny_feed, 1, 3)).decode()
    lines = raw.split("\n")
    assert lines[0] == HEADER and lines[-1] == ""  # ends with a newline
    body = lines[1:-1]
    assert all(len(line.split(",")) == 7 for line in body)
    assert all(re.fullmatch(r"\d+\.\d\d", line.split(",")[4]) for line in body)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", line.split(",")[1]) for line in body)


def test_rows_per_day(tiny_feed):
    for c in (1, 2):
        heights = [day_frame(tiny_feed, c, d).height for d in (1, 2, 3)]
        assert heights == [3000, 3300, 3600]


def test_value_ranges_and_unique_ids(medium_feed):
    df = day_frame(medium_feed, 1, 4)
    ids = df["transaction_id"].cast(pl.Int64)
    assert ids.n_unique() == df.height and ids.min() == 1 and ids.max() == df.height
    qty = df["quantity_sold"].cast(pl.Int64)
    assert qty.min() == 1 and qty.max() == 10
    revenue = df["revenue_usd"].cast(pl.Float64)
    assert revenue.min() >= 5.0 and revenue.max() <= 500.0


def test_day_one_spans_thirty_days_and_later_days_carry_their_date(tiny_feed):
    day1 = new_rows(tiny_feed, 1, 1)["transaction_date"].str.to_date()
    assert day1.min() == START - dt.timedelta(days=29) and day1.max() == START
    assert day1.is_sorted()
    late = 0
    for d in (2, 3):
        dates = new_rows(tiny_feed, 1, d)["transaction_date"].str.to_date()
        day = START + dt.timedelta(days=d - 1)
        assert dates.is_in([day - dt.timedelta(days=k) for k in range(4)]).all()
        late += (dates != day).sum()
    assert 0 < late <= 0.04 * 600  # 2% late rows by default: 12 expected of 600


def test_late_rows_are_dated_one_to_three_days_early(medium_feed):
    for d in (2, 3, 4):
        rows = new_rows(medium_feed, 1, d)
        lag = (
            pl.lit(START + dt.timedelta(days=d - 1)) - rows["transaction_date"].str.to_date()
        ).dt.total_days()
        lag = rows.select(lag=lag)["lag"]
        assert set(lag.unique().to_list()) == {0, 1, 2, 3}
        assert 0.07 < (lag > 0).mean() < 0.13  # --late-fraction 0.1


# --- noise ---------------------------------------------------------------------------------


def zip_category(raw: str | None, known: set[str]) -> str:
    """Independent classifier of zip_code_raw, written from the spec's wording."""
    if raw is None or raw.strip() == "":
        return "empty"
    if re.fullmatch(r"\d{5}", raw):
        return "clean" if raw in known else "unknown_us"
    if re.fullmatch(r"\d{5}-\d{4}", raw):
        return "plus4"
    if re.fullmatch(r"\d{9}", raw):
        return "nine_digits"
    if re.fullmatch(r"\d+ \d+", raw) and len(raw) == 6:
        return "spaced"
    if re.fullmatch(r"(CA|ZIP:|US-|zip )\d{5}", raw):
        return "prefixed"
    if not re.search(r"\d{5}", re.sub(r"\s", "", raw)):
        return "international"
    return "unclassified"


def test_every_zip_noise_category_is_present(medium_feed):
    known = set(
        pl.read_csv(medium_feed / "static/us_zip_codes.csv", infer_schema=False)["zip_code"]
    )
    raw = day_frame(medium_feed, 1, 4)["zip_code_raw"].to_list()
    counts: dict[str, int] = {}
    for value in raw:
        category = zip_category(value, known)
        counts[category] = counts.get(category, 0) + 1
    expected = {"clean", "unknown_us", "plus4", "nine_digits", "spaced", "prefixed"}
    assert set(counts) == expected | {"empty", "international"}  # nothing unclassified
    assert all(counts[c] > 0.01 * len(raw) for c in counts)
    assert {"SW1A 1AA", "M5V 3L9", "INTL"} <= set(raw)
    assert "00000" not in raw  # the unknown-code pool never produces the placeholder


def test_zip_codes_lean_to_california(medium_feed):
    zips = pl.read_csv(medium_feed / "static/us_zip_codes.csv", infer_schema=False)
    rows = day_frame(medium_feed, 1, 4).join(zips, left_on="zip_code_raw", right_on="zip_code")
    share_rows = (rows["state"] == "CA").mean()
    share_codes = (zips["state"] == "CA").mean()
    assert share_codes < 0.08 and share_rows > 0.25


def test_maturity_noise_shares(medium_feed):
    df = day_frame(medium_feed, 2, 4).select(
        tx=pl.col("transaction_date").str.to_date(),
        m=pl.col("maturity_date").str.to_date(strict=False),
        empty=pl.col("maturity_date").is_null(),
    )
    days = (df["m"] - df["tx"]).dt.total_days()
    n = df.height
    shares = {
        "regular": days.is_in([30, 60, 90]).sum() / n,
        "early": days.is_between(-30, -1).sum() / n,
        "late": days.is_between(180, 365).sum() / n,
        "empty": df["empty"].sum() / n,
    }
    assert abs(shares["regular"] - 0.85) < 0.02
    for kind in ("early", "late", "empty"):
        assert abs(shares[kind] - 0.05) < 0.01, kind
    assert sum(shares.values()) == pytest.approx(1.0)  # no other kind of value


def test_sku_popularity_has_a_pareto_tail(medium_feed):
    per_sku = day_frame(medium_feed, 1, 4)["sku_id"].value_counts(sort=True)["count"]
    top = per_sku.head(5000 // 5).sum() / per_sku.sum()  # top 20% of the catalogue
    assert top >= 0.70
    assert per_sku.len() > 2500  # and a long tail exists: most SKUs sell


# --- static lookups ------------------------------------------------------------------------


def test_us_zip_codes_come_from_the_real_list(tiny_feed):
    zips = pl.read_csv(tiny_feed / "static/us_zip_codes.csv", infer_schema=False)
    assert zips.columns == ["zip_code", "city", "state", "is_us"]
    assert zips.height > 40_000 and 2_500 < (zips["state"] == "CA").sum() < 2_800
    assert zips["zip_code"].n_unique() == zips.height
    by_code = {r["zip_code"]: r for r in zips.iter_rows(named=True)}
    assert by_code["94107"]["state"] == "CA" and by_code["94107"]["city"] == "San Francisco"
    assert by_code["10001"]["state"] == "NY"
    assert by_code["00000"]["is_us"] == "false"
    assert zips.filter(pl.col("is_us") == "false").height == 1


def test_sku_groups_map_every_sku_in_the_feed(medium_feed):
    skus = pl.read_csv(medium_feed / "static/sku_groups.csv", infer_schema=False)
    assert skus.columns == ["sku_id", "sku_group", "category", "is_high_priority"]
    assert skus.height == 5000 and skus["sku_id"].n_unique() == 5000
    assert set(skus["is_high_priority"]) == {"true", "false"}
    assert (skus["sku_group"].str.split("-").list.first() == skus["category"]).all()
    feed_skus = set(day_frame(medium_feed, 2, 4)["sku_id"])
    assert feed_skus <= set(skus["sku_id"])


# --- options and failure -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--days", "0"),
        ("--clients", "-1"),
        ("--base-rows", "0"),
        ("--daily-rows", "-5"),
        ("--late-fraction", "1"),
        ("--late-fraction", "-0.1"),
        ("--seed", "-1"),
        ("--start-date", "2025-13-01"),
        ("--days", "ten"),
    ],
)
def test_bad_options_exit_2_with_one_line(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        generate_data.main(["--out", str(tmp_path / "data"), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert option in err[-1] and "error" in err[-1]
    assert not (tmp_path / "data").exists()


def test_unwritable_out_exits_2_and_names_it(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = generate_data.main(["--out", str(blocker / "data"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(blocker / "data") in err[0] and "cannot write" in err[0]


def test_zip64_archives_are_readable(tmp_path, monkeypatch):
    # Members of 4 GiB or more need zip64 records: lower the limit to exercise them.
    monkeypatch.setattr(generate_data, "ZIP64_LIMIT", 1000)
    state = generate_data.DeflateState(zlib.compressobj(6, zlib.DEFLATED, -15))
    day1 = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i * 7) for i in range(500))
    day2 = b"".join(b"%d,x\n" % i for i in range(400))
    first = generate_data.write_day_archive(
        tmp_path / "d1.zip", "d1.csv", state, iter([day1[:10], day1[10:]]), None, START
    )
    generate_data.write_day_archive(
        tmp_path / "d2.zip", "d2.csv", state, iter([day2]), first, START
    )
    for name, expected in (("d1", day1), ("d2", day1 + day2)):
        with zipfile.ZipFile(tmp_path / f"{name}.zip") as zf:
            assert zf.testzip() is None
            assert zf.read(f"{name}.csv") == expected
            assert zf.infolist()[0].file_size == len(expected)


def complete_archives_only(out: Path, base: int, daily: int) -> list[int]:
    """Check every archive under a final name is whole; return the days found."""
    days = []
    for path in sorted((out / "client_1").glob("transactions_day_*.zip")):
        day = int(path.stem.rsplit("_", 1)[1])
        lines = read_csv_bytes(path).count(b"\n")
        assert lines == 1 + base + (day - 1) * daily, path
        days.append(day)
    return days


def start_generator(out: Path, base: int, daily: int) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "generate_data.py"), "--out", str(out), "--quiet"]
    cmd += ["--clients", "1", "--days", "8", "--base-rows", str(base), "--daily-rows", str(daily)]
    return subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE)


def test_interrupted_runs_leave_no_half_written_archive(tmp_path):
    # Three runs at once (their start-up dominates): Ctrl-C to the whole process group,
    # SIGTERM to the parent alone, SIGKILL to the group.
    base, daily = 100_000, 100_000
    runs = {how: start_generator(tmp_path / how, base, daily) for how in ("int", "term", "kill")}
    deadline = time.monotonic() + 60
    pending = dict(runs)
    while pending and time.monotonic() < deadline:
        for how, proc in list(pending.items()):
            if (tmp_path / how / "client_1" / "transactions_day_1.zip").exists():
                if how == "int":
                    os.killpg(proc.pid, signal.SIGINT)
                elif how == "term":
                    proc.send_signal(signal.SIGTERM)
                else:
                    os.killpg(proc.pid, signal.SIGKILL)
                del pending[how]
        time.sleep(0.01)
    assert not pending, f"generator did not start writing in time: {list(pending)}"
    for how, proc in runs.items():
        out = tmp_path / how
        _, err = proc.communicate(timeout=30)
        assert proc.returncode != 0
        days = complete_archives_only(out, base, daily)
        assert days[0] == 1 and days == list(range(1, len(days) + 1)) and len(days) < 8
        if how == "kill":
            # Nothing can clean up after SIGKILL: the next run must, and not trip on it.
            generate(
                out, "--clients", "1", "--days", "2", "--base-rows", "100", "--daily-rows", "9"
            )
        else:
            assert b"interrupted" in err
        assert list(out.rglob("*.tmp*")) == []
