"""Line blocks: the text inflated ahead on a thread, and that thread's end."""

from __future__ import annotations

import threading

import pytest
from conftest import (
    write_feed,
)

from incremental_bench import (
    archive,
    blocks,
    clock,
    config,
    transform,
)


@pytest.fixture
def new_inflate_threads():
    """The inflating threads started during the test and still alive, when asked."""
    before = set(threading.enumerate())
    return lambda: [t for t in set(threading.enumerate()) - before if t.name == "inflate"]


def test_prefetched_text_comes_in_order_and_a_producer_error_reaches_the_caller(
    new_inflate_threads,
):
    chunks = [bytes([i]) * (i + 1) for i in range(50)]
    assert list(blocks.prefetched(iter(chunks), depth=2)) == chunks

    def failing():
        yield b"a"
        raise config.CorruptArchive("x.zip: corrupt archive, cannot inflate")

    got = []
    with pytest.raises(config.CorruptArchive, match=r"x\.zip"):
        got.extend(blocks.prefetched(failing()))
    assert got == [b"a"] and not new_inflate_threads()


def test_a_read_stopped_early_stops_its_inflating_thread_and_closes_the_source(
    new_inflate_threads,
):
    closed = []

    def endless():
        try:
            while True:
                yield b"x" * 100
        finally:
            closed.append(True)

    reader = blocks.prefetched(endless(), depth=2)
    assert next(reader) == b"x" * 100
    reader.close()
    assert closed == [True] and not new_inflate_threads()


def test_an_error_after_the_read_leaves_no_inflating_thread_behind(
    tmp_path, monkeypatch, new_inflate_threads
):
    # The traceback is kept (as a test runner or a caller logging it would): the
    # thread must still be gone, so process_blocks has to close its read itself.
    # Small reads, so that the producer is still running, queue full, when the first
    # block fails.
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 2_000)
    monkeypatch.setattr(archive, "READ_CHUNK_BYTES", 512)
    monkeypatch.setattr(archive, "INFLATE_OUT_BYTES", 64)
    rows = [f"{i},2025-10-01,SKU-1,1,1.00,2025-11-01,94107" for i in range(2_000)]
    feed = write_feed(tmp_path / "data", [rows])

    def broken(*args, **kwargs):
        raise RuntimeError("transform failed")

    monkeypatch.setattr(transform, "process_transactions", broken)
    scan = blocks.scan_archive(feed / "client_1/transactions_day_1.zip", 1)
    with pytest.raises(RuntimeError) as caught:
        transform.process_blocks(
            scan, 2, "client_1", transform.load_lookups(feed), clock.Stopwatch()
        )
    assert caught.traceback and not new_inflate_threads()
