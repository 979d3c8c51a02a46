"""Installed, kvmtest's plugin is loaded into every pytest session on the machine (pytest11 entry
point); in another project's session it must stay dormant: no header, no /dev/kvm, no /dev/kmsg.
It acts in kvmtest's own sessions or when asked (-p kvmtest, -p kvmtest.plugin, --kvm-*, KVMTEST_*)."""

import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

# Runs pytest with an audit hook that records every open of a KVM or kernel-log device (os.open
# and open() raise the "open" audit event before the open itself, so even a failed try counts).
DRIVER = """
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and args
                 and str(args[0]).startswith(("/dev/kvm", "/dev/kmsg")) else None)
import pytest
code = pytest.main(sys.argv[1:])
print("DEVICES OPENED:", sorted(set(opened)))
sys.exit(code)
"""

pytestmark = pytest.mark.skipif(not any(ep.name == "kvmtest" for ep in entry_points(group="pytest11")),
                                reason="kvmtest is not installed, so no other project's pytest loads its plugin")


@pytest.fixture
def project(tmp_path):
    """Someone else's project: its own ini file and a test that knows nothing about KVM."""
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (tmp_path / "test_other.py").write_text("def test_other():\n    assert 1 + 1 == 2\n")
    return tmp_path


def _pytest(cwd, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KVMTEST_", "PYTEST_")) and k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_another_projects_session_sees_no_kvmtest(project):
    proc = _pytest(project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kvmtest-" in next(line for line in proc.stdout.splitlines() if line.startswith("plugins:")), \
        "the plugin must be loaded (else this test proves nothing)"
    assert "kvmtest:" not in proc.stdout, proc.stdout
    assert "DEVICES OPENED: []" in proc.stdout


@pytest.mark.parametrize("ask", [["-p", "kvmtest"], ["-p", "kvmtest.plugin"], ["--kvm-modes=real"]])
def test_asking_for_it_wakes_it(project, ask):
    """-p kvmtest.plugin used to crash pytest (the entry point registered the module a second time)."""
    proc = _pytest(project, *ask)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kvmtest: kernel " in proc.stdout and "known-issue entries" in proc.stdout
    assert "/dev/kvm" in proc.stdout.split("DEVICES OPENED:")[1], "the fingerprint asks the device"


def test_kvmtest_environment_wakes_it(project):
    env_proc = subprocess.run([sys.executable, "-c", DRIVER], cwd=project, capture_output=True, text=True,
                              timeout=120, env={**{k: v for k, v in os.environ.items() if not k.startswith("KVMTEST_")},
                                                "KVMTEST_PLUGIN": "1"})
    assert "kvmtest: kernel " in env_proc.stdout, env_proc.stdout + env_proc.stderr


def test_a_kvmtest_fixture_in_a_dormant_session_says_how_to_wake_it(project):
    (project / "test_other.py").write_text("def test_k(kvm):\n    pass\n")
    proc = _pytest(project)
    assert "kvmtest's pytest plugin is dormant in this session" in proc.stdout, proc.stdout
    assert "DEVICES OPENED: []" in proc.stdout
