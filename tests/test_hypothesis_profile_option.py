"""The checkout's conftest turns an unknown --hypothesis-profile into one usage error."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _collect(*args):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                           *args, "suites/emulator"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_unknown_profile_is_one_usage_error_naming_ours():
    proc = _collect("--hypothesis-profile=nosuch")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "--hypothesis-profile='nosuch': no such profile; kvmtest's are kvmtest-fast" in proc.stderr
    assert "INTERNALERROR" not in proc.stdout + proc.stderr


def test_our_profiles_are_accepted():
    for name in ("kvmtest-fast", "kvmtest-deep"):
        proc = _collect(f"--hypothesis-profile={name}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
