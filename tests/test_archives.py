"""Day archives as real clients' tools write them: each read exactly, resumed where it can be.

Each case rewrites every day of a 4-day feed with late rows by a real archiver (Info-ZIP,
7-Zip, Java's ZipOutputStream) or by Python's zipfile where no tool writes the form, then
replays the days: the state equals the oracle's table every day, and stored and deflate
members resume on every day after the first. CI installs the tools (.ci/run) and never
skips; a developer's machine without one may.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import assert_table_matches, fresh_db, generate, oracle_for, read_csv_bytes, state

import main
from incremental_bench import archive, config, pipelines, store

DAYS = (1, 2, 3, 4)
ZIPPER_JAVA = """
import java.io.*;
import java.nio.file.*;
import java.util.zip.*;

/** Zips each CSV given into the archive given after it, as a Java exporter would. */
public class Zipper {
    public static void main(String[] args) throws IOException {
        boolean stored = args[0].equals("stored");
        int level = Integer.parseInt(args[1]);
        for (int i = 2; i < args.length; i += 2) {
            byte[] text = Files.readAllBytes(Paths.get(args[i]));
            try (ZipOutputStream out = new ZipOutputStream(new FileOutputStream(args[i + 1]))) {
                out.setLevel(level);
                ZipEntry entry = new ZipEntry(Paths.get(args[i]).getFileName().toString());
                if (stored) {  // a stored entry's sizes and CRC go before its data
                    CRC32 crc = new CRC32();
                    crc.update(text);
                    entry.setMethod(ZipEntry.STORED);
                    entry.setSize(text.length);
                    entry.setCrc(crc.getValue());
                }
                out.putNextEntry(entry);
                out.write(text);
                out.closeEntry();
            }
        }
    }
}
"""


def need(tool: str) -> str:
    """The tool's path; skipped where it is missing, except in CI (which installs it)."""
    found = shutil.which(tool)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed: .ci/run installs it")
        pytest.skip(f"{tool} is not installed here")
    return found


@pytest.fixture(scope="module")
def source_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 client x 4 days, 5,000 + 300 rows a day, 5% of them late.

    Big enough that every encoder here writes more than one deflate block on day 1 (a
    point to resume from lies only between blocks)."""
    return generate(
        tmp_path_factory.mktemp("archives") / "data",
        *["--clients", "1", "--days", "4", "--base-rows", "5000", "--daily-rows", "300"],
        *["--seed", "19", "--late-fraction", "0.05"],
    )


@pytest.fixture(scope="module")
def zipper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Zipper.java compiled once: the folder holding its class."""
    need("javac")
    folder = tmp_path_factory.mktemp("java")
    (folder / "Zipper.java").write_text(ZIPPER_JAVA)
    subprocess.run(["javac", "Zipper.java"], cwd=folder, check=True)
    return folder


Writer = Callable[[list[tuple[Path, Path]]], None]  # (CSV on disk, archive to write) per day


def run(*cmd: str | Path, cwd: Path | None = None, stdout: Path | None = None) -> None:
    """A tool's command, its output to a file if asked; a failure shows its stderr."""
    with open(stdout, "wb") if stdout else open(os.devnull, "wb") as out:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, stdout=out, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def info_zip(*options: str) -> Writer:
    def write(days: list[tuple[Path, Path]]) -> None:
        need("zip")
        for csv, zipped in days:
            run("zip", "-q", "-j", *options, zipped, csv)

    return write


def info_zip_streamed(days: list[tuple[Path, Path]]) -> None:
    # Writing to a pipe, zip cannot seek back: sizes and CRC follow the data.
    need("zip")
    for csv, zipped in days:
        run("sh", "-c", 'zip -q -j - "$1" | cat', "sh", csv, stdout=zipped)


def info_zip_in_a_folder(days: list[tuple[Path, Path]]) -> None:
    # As a macOS user's "Compress" leaves it: the CSV under another name in a folder,
    # a readme beside it, and the __MACOSX/ metadata of each file.
    need("zip")
    for csv, zipped in days:
        root = csv.parent / f"tree-{csv.stem}"
        (root / "export").mkdir(parents=True)
        (root / "__MACOSX" / "export").mkdir(parents=True)
        shutil.copy(csv, root / "export" / "sales export.csv")
        (root / "export" / "README.txt").write_text("Daily sales, cumulative.\n")
        (root / "__MACOSX" / "export" / "._sales export.csv").write_bytes(b"\0\5\26\7" * 20)
        run("zip", "-q", "-r", zipped.resolve(), "export", "__MACOSX", cwd=root)
        shutil.rmtree(root)


def seven_zip(*options: str) -> Writer:
    def write(days: list[tuple[Path, Path]]) -> None:
        need("7zz")
        for csv, zipped in days:
            run("7zz", "a", "-tzip", "-bd", *options, zipped, csv)

    return write


def java(method: str, level: int) -> Writer:
    def write(days: list[tuple[Path, Path]], folder: Path) -> None:
        need("java")
        pairs = [str(p) for day in days for p in day]
        run("java", "-cp", folder, "Zipper", method, str(level), *pairs)

    return write


def python_streamed(days: list[tuple[Path, Path]]) -> None:
    # zipfile writing to an unseekable stream: data descriptors, as a web export streams.
    for csv, zipped in days:
        with open(zipped, "wb") as raw, os.fdopen(os.dup(raw.fileno()), "wb") as f:

            class Unseekable:
                def write(self, data: bytes) -> int:
                    return f.write(data)

                def flush(self) -> None:
                    f.flush()

            with (
                zipfile.ZipFile(Unseekable(), "w", zipfile.ZIP_DEFLATED) as zf,
                zf.open(csv.name, "w") as member,
            ):
                member.write(csv.read_bytes())


def rewrite(source: Path, feed: Path, writer: Writer, zipper_dir: Path | None) -> Path:
    """The source feed with every day archive written again by `writer`, from its CSV."""
    shutil.copytree(source, feed)
    days = []
    for day in DAYS:
        zipped = archive.archive_path(feed, "client_1", day)
        csv = zipped.with_suffix(".csv")
        csv.write_bytes(read_csv_bytes(zipped))
        zipped.unlink()
        days.append((csv, zipped))
    if zipper_dir is not None:
        writer(days, zipper_dir)  # type: ignore[call-arg]
    else:
        writer(days)
    for csv, _ in days:
        csv.unlink()
    return feed


# (writer, the member's zip method, written with a data descriptor, whether it resumes)
FORMS = {
    "info-zip-6": (info_zip("-6"), zipfile.ZIP_DEFLATED, False),
    "info-zip-1": (info_zip("-1"), zipfile.ZIP_DEFLATED, False),
    "info-zip-9": (info_zip("-9"), zipfile.ZIP_DEFLATED, False),
    "info-zip-stored": (info_zip("-0"), zipfile.ZIP_STORED, False),
    "info-zip-zip64": (info_zip("-fz"), zipfile.ZIP_DEFLATED, False),
    "info-zip-streamed": (info_zip_streamed, zipfile.ZIP_DEFLATED, True),
    "info-zip-folder-and-metadata": (info_zip_in_a_folder, zipfile.ZIP_DEFLATED, False),
    "7-zip-deflate-9": (seven_zip("-mx=9"), zipfile.ZIP_DEFLATED, False),
    "7-zip-deflate-1": (seven_zip("-mx=1"), zipfile.ZIP_DEFLATED, False),
    "7-zip-stored": (seven_zip("-mm=Copy"), zipfile.ZIP_STORED, False),
    "7-zip-bzip2": (seven_zip("-mm=BZip2"), zipfile.ZIP_BZIP2, False),
    "7-zip-lzma": (seven_zip("-mm=LZMA"), zipfile.ZIP_LZMA, False),
    "java-deflate": (java("deflated", -1), zipfile.ZIP_DEFLATED, True),
    "java-deflate-9": (java("deflated", 9), zipfile.ZIP_DEFLATED, True),
    "java-stored": (java("stored", 0), zipfile.ZIP_STORED, False),
    "python-streamed": (python_streamed, zipfile.ZIP_DEFLATED, True),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_day_keeps_parity_and_resumes_where_the_method_allows(
    form, source_feed, request, tmp_path
):
    writer, method, descriptor = FORMS[form]
    zipper_dir = request.getfixturevalue("zipper") if form.startswith("java") else None
    feed = rewrite(source_feed, tmp_path / "data", writer, zipper_dir)
    # The tool wrote the form this case is about.
    with zipfile.ZipFile(archive.archive_path(feed, "client_1", 4)) as zf:
        info = zf.getinfo(archive.locate_member(archive.archive_path(feed, "client_1", 4), 4).name)
        assert (info.compress_type, bool(info.flag_bits & 0x08)) == (method, descriptor)
    if form.endswith("zip64"):  # zip64 extra fields, and the zip64 end of the directory
        raw = archive.archive_path(feed, "client_1", 4).read_bytes()
        assert b"PK\x06\x06" in raw and b"\x01\x00" in info.extra
    con = fresh_db(tmp_path / "db.sqlite")
    for day in DAYS:
        mode = pipelines.incremental_step(con, feed, "client_1", day).read_mode
        if day == 1:
            assert mode == "read whole: first run"
        elif method in archive.RESUMABLE_METHODS:
            assert mode.startswith("resumed"), (day, mode)
        else:
            name = archive.READABLE_METHODS[method]
            why = f"the CSV member is {name}-compressed: only stored and deflate resume"
            assert mode == f"read whole: {why}", (day, mode)
        table, _, _ = oracle_for(source_feed, "client_1", day)  # the same text
        assert_table_matches(state(con), table)
    # The full refresh reads every form the same.
    pipelines.run_baseline_benchmark(tmp_path / "db.sqlite", feed, "client_1", 4)
    full = store.sales_rows(con, "processed_sales_full_refresh", "client_1")
    assert_table_matches(full, oracle_for(source_feed, "client_1", 4)[0])


def test_a_method_python_cannot_read_is_one_line_naming_it(source_feed, tmp_path):
    need("7zz")
    feed = rewrite(source_feed, tmp_path / "data", seven_zip("-mm=Deflate64"), None)
    path = archive.archive_path(feed, "client_1", 1)
    con = fresh_db(tmp_path / "db.sqlite")
    with pytest.raises(config.InputError) as err:
        pipelines.incremental_step(con, feed, "client_1", 1)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "Deflate64" in message, message
    assert store_is_empty(con)


def store_is_empty(con: store.Connection) -> bool:
    """No client row and no checkpoint: nothing was written."""
    tables = ("processed_sales", "ingest_checkpoint")
    return all(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0 for t in tables)


def test_the_whole_benchmark_on_stored_archives_resumes_and_keeps_parity(
    source_feed, tmp_path, capsys
):
    feed = rewrite(source_feed, tmp_path / "data", info_zip("-0"), None)
    out = tmp_path / "r.json"
    args = ["--data-dir", str(feed), "--db", str(tmp_path / "db.sqlite"), "--day", "4"]
    args += ["--repeat", "1", "--no-sweep", "--no-peers", "--report", str(tmp_path / "r.md")]
    assert main.main([*args, "--json", str(out)]) == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    assert results["parity"]["ok"]
    incremental = results["incremental"]
    assert incremental["resumed_runs"] == len(incremental["read_modes"]) == 2  # warm-up too
    # The read floor of a stored member reads its bytes: the same work as the step.
    assert results["floors"]["same_work"] and results["floors"]["stages"]["read"]["floor"] > 0
