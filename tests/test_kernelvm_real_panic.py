"""A real kernel panic in the middle of a `kvmtest run --kernel` run costs one test, not the run.

Boots the cached Debian kernel (`kvmtest kernel fetch debian`) under QEMU TCG, twice: a demo
test makes the VM's kernel panic through /proc/sysrq-trigger ('c': panic("sysrq triggered
crash"), Documentation/admin-guide/sysrq.rst), the crash oracle names it, and a fresh VM runs the
tests that remain. A first test outlasts --vm-stall and passes: the heartbeat of a test in flight
keeps a slow VM from being taken for a hung one. Skips where the kernel or QEMU is missing;
about two TCG boots and two minutes long.
"""

import shutil

import pytest

from kvmtest import cli
from kvmtest.kernelvm import KernelVmError, boot, kernel, runner, vmrun
from kvmtest.reports.results import read_junit

# The panicking test acts only in a VM booted with this word on its command line, so the demo can
# never take down the machine it is collected on by mistake.
TRIGGER = "kvmtest_demo_panic=1"

DEMO_TESTS = f"""\
import time
from pathlib import Path

def test_a_outlasts_the_stall_limit():
    time.sleep(130)  # silent for longer than --vm-stall: only the heartbeat keeps the VM alive

def test_b_panics():
    assert "{TRIGGER}" in Path("/proc/cmdline").read_text().split(), "not the demo VM: refusing to panic"
    Path("/proc/sysrq-trigger").write_text("c")
    time.sleep(120)

def test_c():
    pass
"""


@pytest.fixture
def tools_and_kernel():
    try:
        tools = boot.find_tools()
        debian = kernel.resolve("debian")
    except KernelVmError as e:
        pytest.skip(f"needs QEMU, virtme-ng and `kvmtest kernel fetch debian`: {e}")
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86_64")
    return tools, debian


def test_a_real_kernel_panic_costs_one_test_and_a_fresh_vm_runs_the_rest(tmp_path, tools_and_kernel):
    tools, debian = tools_and_kernel
    reports = tmp_path / "reports"
    demo = reports / "demo"  # inside the VM's read-write directory: the VM sees it whatever it mounts on /tmp
    demo.mkdir(parents=True)
    (demo / "test_demo.py").write_text(DEMO_TESTS)
    args = cli.build_parser().parse_args(["run", "--report-dir", str(reports), "-j", "0", "--vm-stall", "100",
                                          "--vm-timeout", "800", "--vm-cpus", "1"])
    b = vmrun.run_config(args, ["-s", "-pno:cacheprovider", str(demo)], debian, "tcg", (TRIGGER,),
                         reports, tools)
    assert [kind for kind, _, _ in b.boots] == ["panic", "done"], (b.boots, b.message)
    assert [kind for _, kind in b.crashes] == ["panic"], b.crashes
    assert b.crashes[0][0].endswith("test_demo.py::test_b_panics"), b.crashes
    results = {r.name: r for r in read_junit(b.path(".xml"))}
    assert {n: r.status for n, r in results.items()} == {"test_a_outlasts_the_stall_limit": "passed",
                                                          "test_b_panics": "error", "test_c": "passed"}
    assert results["test_b_panics"].message.startswith("kernel panic in the VM: "), results["test_b_panics"].message
    assert "sysrq triggered crash" in results["test_b_panics"].details
    assert runner.boot_code(b, bisect=True) == runner.BISECT_BAD
