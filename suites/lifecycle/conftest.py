"""A fresh interpreter for checks whose failure on a broken kvmtest would be a crash or a hang:
run there, a SIGSEGV or a spin becomes a failed test instead of taking the session with it."""

import signal
import subprocess
import sys
import textwrap

import pytest

from kvmtest.plugin import settings

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


@pytest.fixture
def isolated(kvm, pytestconfig):
    """isolated(body, timeout=60) runs `body` (after PREAMBLE: `kvm`, `Guest`, `attempt`) in a new
    Python process on the same KVM device and returns its stdout; a signal or a timeout fails
    the test naming it."""
    device = settings(pytestconfig)["kvm_device"]

    def run(body: str, timeout: float = 60) -> str:
        code = PREAMBLE + textwrap.dedent(body)
        try:
            proc = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"the check did not finish within {timeout}s (a hang); output so far:\n{e.stdout or ''}")
        if proc.returncode < 0:
            pytest.fail(f"the interpreter was killed by {signal.Signals(-proc.returncode).name}; "
                        f"output:\n{proc.stdout}\n{proc.stderr[-2000:]}")
        assert proc.returncode == 0, f"the check exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-2000:]}"
        return proc.stdout

    return run
