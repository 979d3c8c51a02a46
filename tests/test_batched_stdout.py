"""kvmtest.batched_stdout: a host shard's console output, written to its pipe in batches."""

import os
import time

import pytest

from kvmtest.batched_stdout import INTERVAL, BatchedStdout


@pytest.fixture
def pipe():
    """(BatchedStdout over a pipe's write end, the read end, non-blocking)."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    out = BatchedStdout(w, "utf-8", "strict")
    os.close(w)  # the stream writes through its own duplicate
    yield out, r
    out.close()
    os.close(r)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def _read_within(fd: int, seconds: float) -> bytes:
    deadline, got = time.monotonic() + seconds, b""
    while time.monotonic() < deadline:
        got += _read(fd)
        time.sleep(0.01)
    return got


def test_lines_flushed_one_after_the_other_reach_the_pipe_together(pipe):
    """pytest's flush after each line writes out the first; the next ones wait and go out in one
    write no later than about INTERVAL after, without another flush."""
    out, r = pipe
    out.write("first\n")
    out.flush()
    assert _read(r) == b"first\n"
    for n in range(50):
        out.write(f"line {n}\n")
        out.flush()
    assert _read(r) == b"", "lines flushed within INTERVAL of the last write-out were written at once"
    assert _read_within(r, 4 * INTERVAL) == b"".join(f"line {n}\n".encode() for n in range(50))


def test_flush_now_writes_at_once(pipe):
    out, r = pipe
    out.write("a\n")
    out.flush()
    out.write("b\n")
    out.flush_now()
    assert _read(r) == b"a\nb\n"


def test_output_goes_to_the_pipe_while_the_fd_it_was_made_from_points_elsewhere(tmp_path):
    """pytest's fd capture points fd 1 at a temporary file while a test runs: a batch written out
    then still reaches the console, not the test's captured output."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    saved = os.dup(w)
    out = BatchedStdout(w, "utf-8", "strict")
    try:
        with open(tmp_path / "captured", "wb") as captured:
            os.dup2(captured.fileno(), w)  # as FDCapture does to fd 1
            out.write("during the test\n")
            out.flush_now()
            os.dup2(saved, w)
        assert _read(r) == b"during the test\n"
        assert (tmp_path / "captured").read_bytes() == b""
    finally:
        out.close()
        for fd in (r, w, saved):
            os.close(fd)


def test_not_batching_it_acts_as_the_stream_it_replaced():
    """With batching off every flush writes out; with write_through (PYTHONUNBUFFERED) every write."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    plain, unbuffered = BatchedStdout(w, "utf-8", "strict"), BatchedStdout(w, "utf-8", "strict", write_through=True)
    os.close(w)
    try:
        plain.batching = unbuffered.batching = False
        plain.write("held\n")
        assert _read(r) == b""  # a plain block-buffered stream holds it too, until flushed
        plain.flush()
        assert _read(r) == b"held\n"
        plain.flush()
        plain.write("again\n")
        plain.flush()  # within INTERVAL of the last: written out all the same
        assert _read(r) == b"again\n"
        unbuffered.write("at once\n")
        assert _read(r) == b"at once\n"
    finally:
        plain.close()
        unbuffered.close()
        os.close(r)
