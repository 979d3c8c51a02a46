"""Reading the kernel log ends, whatever its fd answers (no KVM needed).

devices/kmsg: a read returns one record, EAGAIN (non-blocking) when none is left, and EPIPE
once when records were overwritten. A reader that retries every other error, or drains a log
that never runs dry, never returns; each case runs in a fresh interpreter so that a reader
that loops fails the test instead of hanging it.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from kvmtest.reports.kmsg import KernelLog


def _drain_in_child(setup: str) -> str:
    code = textwrap.dedent("""
        import os
        from kvmtest.reports import kmsg
        log = kmsg.KernelLog.__new__(kmsg.KernelLog)
    """) + textwrap.dedent(setup) + "print('LINES', len(log._drain()))\n"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("draining the kernel log did not return within 30 s")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_an_error_on_every_read_ends_the_drain():
    """A directory fd answers EISDIR to every read: the drain stops instead of retrying."""
    assert "LINES 0" in _drain_in_child("log.fd = os.open('/', os.O_RDONLY)\n")


def test_a_log_that_never_runs_dry_ends_the_drain():
    """/dev/zero never runs dry: the drain stops after MAX_RECORDS reads."""
    assert "LINES 50" in _drain_in_child("kmsg.MAX_RECORDS = 50\nlog.fd = os.open('/dev/zero', os.O_RDONLY)\n")


def test_records_then_eagain():
    """Records are returned up to EAGAIN (a non-blocking pipe with nothing left)."""
    r, w = os.pipe2(os.O_NONBLOCK)
    try:
        os.write(w, b"6,1,0,-;kvm: one\n")
        log = KernelLog.__new__(KernelLog)
        log.fd = r
        assert log.new_lines() == ["kvm: one"]
        assert log.new_lines() == []
    finally:
        os.close(r)
        os.close(w)
