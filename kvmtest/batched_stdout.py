"""A host shard's console output, written to `kvmtest run`'s pipe in batches.

pytest flushes its terminal after each test's line. Into the pipe `kvmtest run` reads its shards'
output from (kvmtest.host_shards), every flush is a write(2) that wakes the reader: measured on the
2-CPU development host, `pytest suites/paging -v` took 7.8-8.3 s writing into a pipe and 7.5-7.8 s
into a file. A shard's stdout is therefore a BatchedStdout: what pytest writes waits up to INTERVAL
seconds and goes out in one write, and a thread writes out whatever has waited that long, so the lines
before a test that runs for minutes still show while it runs.

It writes through its own duplicate of the file descriptor it was given: pytest's fd capture points
fd 1 itself at a temporary file while a test runs, and a batch written there would end up in that
test's captured output instead of on the console. When pytest does not capture fd 1 (-s,
--capture=sys or tee-sys) a test's own writes to it (a subprocess, C code) would overtake the batched
lines: the shard then turns batching off, and the stream acts as the plain stdout it replaced.
A shard that dies outright (a signal, the OOM killer) loses what it held, at most the last 0.2 s of
lines; its tests' results are still in the run's report (kvmtest.shard_claims keeps a log).
"""

import io
import os
import threading
import time

INTERVAL = 0.1  # seconds a line may wait before it reaches the pipe


class BatchedStdout(io.TextIOWrapper):
    """A text stream over a duplicate of `fd` (`encoding`, `errors` as the stream it replaces has
    them) whose flush() writes out only when the last write-out is INTERVAL seconds old, while
    `batching` is true; set it false and it acts as a plain stream: every flush writes out, and with
    `write_through` (the stream it replaces had it: PYTHONUNBUFFERED) so does every write. flush_now()
    writes out at once (before the process exits)."""

    def __init__(self, fd: int, encoding: str | None = None, errors: str | None = None, write_through: bool = False):
        super().__init__(io.BufferedWriter(io.FileIO(os.dup(fd), "w")), encoding=encoding, errors=errors)
        self._lock = threading.Lock()  # the writer thread and the flusher share the buffers
        self._due = 0.0
        self._pending = False
        self.batching = True
        self._plain_write_through = write_through
        threading.Thread(target=self._flusher, name="kvmtest-batched-stdout", daemon=True).start()

    def write(self, text: str) -> int:
        """Hold `text` for the next write-out; the number of characters, as TextIOWrapper's."""
        with self._lock:
            self._pending = True
            written = super().write(text)
        if not self.batching and self._plain_write_through:
            self.flush_now()
        return written

    def flush(self) -> None:
        """pytest's flush after each line: a write-out only when the last one is INTERVAL seconds old."""
        if not self.batching or time.monotonic() >= self._due:
            self.flush_now()

    def flush_now(self) -> None:
        """Write out what is held, now (OSError as a write to the pipe raises it)."""
        with self._lock:
            self._pending = False
            self._due = time.monotonic() + INTERVAL
            super().flush()

    def _flusher(self) -> None:
        while not self.closed:
            time.sleep(INTERVAL)
            if self._pending and time.monotonic() >= self._due:
                try:
                    self.flush_now()
                except (OSError, ValueError):  # the reader went away, or the stream was closed meanwhile
                    return
