"""A fresh interpreter for checks whose failure on a broken kvmtest would be a crash or a hang:
run there, a SIGSEGV or a spin becomes a failed test instead of taking the session with it."""

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kvmtest.options import settings

PREAMBLE = """\
import errno, sys, threading, time
from kvmtest.errors import ClosedError, GuestTimeout
from kvmtest.guest import Guest
from kvmtest.kvm import Kvm

kvm = Kvm(sys.argv[1])


def attempt(label, action):
    # One line per action: CLOSED <label> <message>, or what happened instead.
    try:
        result = action()
    except ClosedError as e:
        print("CLOSED", label, e, flush=True)
    except Exception as e:
        print("RAISED", label, type(e).__name__, e, flush=True)
    else:
        print("RETURNED", label, repr(result), flush=True)
"""


# Start-up is not the check: under an emulated CPU (QEMU TCG, `kvmtest run --kernel` without nested
# virtualization) a fresh interpreter took 28 s to import kvmtest and open /dev/kvm on a loaded host,
# which ate the whole hang bound of a check that itself takes well under a second.
READY = b"kvmtest-isolated: started\n"
STARTUP_TIMEOUT = 600


def _read_until_ready(proc: subprocess.Popen, timeout: float) -> tuple[bool | None, bytes]:
    """Read `proc`'s stdout (raw, so nothing is left in a buffer communicate() would not see) up to
    READY: (True, what came after it), (False, output) when stdout ended first, (None, output)
    when READY did not come within `timeout` seconds."""
    fd, got, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while READY not in got:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None, got
            chunk = os.read(fd, 65536)
            if not chunk:
                return False, got
            got += chunk
    return True, got.split(READY, 1)[1]


@pytest.fixture
def isolated(kvm, pytestconfig):
    """isolated(body, timeout=60) runs `body` (after PREAMBLE: `kvm`, `Guest`, `attempt`) in a new
    Python process on the same KVM device and returns its stdout; a signal, or `body` running
    past `timeout` seconds, fails the test naming it. The interpreter's start-up (imports, opening
    the device) is bounded separately, by STARTUP_TIMEOUT: it is no part of the check."""
    device = settings(pytestconfig)["kvm_device"]

    def run(body: str, timeout: float = 60) -> str:
        code = PREAMBLE + f"sys.stdout.write({READY.decode()!r}); sys.stdout.flush()\n" + textwrap.dedent(body)
        with subprocess.Popen([sys.executable, "-c", code, device], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as proc:
            started, early = _read_until_ready(proc, STARTUP_TIMEOUT)
            hung = f"the interpreter did not start within {STARTUP_TIMEOUT}s" if started is None else None
            if not hung:
                try:
                    out, err = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    hung = f"the check did not finish within {timeout}s (a hang)"
            if hung:
                proc.kill()
                out, err = proc.communicate()
        out, err = (early + out).decode(errors="replace"), err.decode(errors="replace")
        if hung:
            pytest.fail(f"{hung}; output so far:\n{out}\n{err[-2000:]}")
        if proc.returncode < 0:
            pytest.fail(f"the interpreter was killed by {signal.Signals(-proc.returncode).name}; "
                        f"output:\n{out}\n{err[-2000:]}")
        assert proc.returncode == 0, f"the check exited with {proc.returncode}:\n{out}\n{err[-2000:]}"
        return out

    return run
