"""`kvmtest run --kernel` without booting anything: kernel lookup, Debian fetch parsing, the vng
command per accelerator, the crash oracle's console parser and watchdog, verdicts and exit codes."""

import argparse
import json
import os
import re
import struct
import sys
from pathlib import Path

import pytest

from kvmtest import cli
from kvmtest.kernelvm import KernelVmError, boot, console, fetch, inner, kernel, progress, runner, vmrun
from kvmtest.reports.results import read_junit

BENCH_UPSTREAM_HOST = Path(__file__).parents[1] / "benchmarks/bench_upstream_host.py"

# The tail of a real oops and panic as Linux 6.1 prints them (x86, printk.time=1).
PANIC_LOG = """\
[   88.120001] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   88.120002] #PF: supervisor read access in kernel mode
[   88.120003] Oops: 0000 [#1] PREEMPT SMP NOPTI
[   88.120004] CPU: 1 PID: 412 Comm: python3 Not tainted 6.1.0-57-amd64 #1  Debian 6.1.192-3
[   88.120005] RIP: 0010:kvm_mmu_page_fault+0x2a/0x6f0 [kvm]
[   88.120010] Kernel panic - not syncing: Fatal exception
"""


def bzimage(path: Path, version: bytes) -> Path:
    """A file with an x86 boot header whose kernel_version string is `version` (boot.rst)."""
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x400 - 0x200)
    data[0x400:0x400 + len(version) + 1] = version + b"\0"
    path.write_bytes(bytes(data))
    return path


# --- kernel lookup -------------------------------------------------------------------------------

def test_image_release_reads_the_setup_header(tmp_path):
    img = bzimage(tmp_path / "bzImage", b"6.13.0-rc1-kvm-next+ (me@box) #4 SMP PREEMPT_DYNAMIC")
    assert kernel.image_release(img) == "6.13.0-rc1-kvm-next+"


def test_image_release_refuses_a_file_without_boot_header(tmp_path):
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF" + bytes(0x400))
    with pytest.raises(KernelVmError, match=r"vmlinux: no x86 boot header \('HdrS' at 0x202\)"):
        kernel.image_release(tmp_path / "vmlinux")


def test_kernel_debian_without_fetch_says_what_to_run(tmp_path):
    with pytest.raises(KernelVmError, match="run `kvmtest kernel fetch debian` first"):
        kernel.resolve("debian", cache=tmp_path)


def test_kernel_path_that_does_not_exist(tmp_path):
    with pytest.raises(KernelVmError, match="no-such-bzImage: no such file"):
        kernel.resolve(str(tmp_path / "no-such-bzImage"), cache=tmp_path)


def test_kernel_path_that_is_a_device_is_not_called_missing(tmp_path):
    with pytest.raises(KernelVmError, match="/dev/null: not a regular file"):
        kernel.resolve("/dev/null", cache=tmp_path)


def test_cache_dir_honours_kvmtest_kernel_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KVMTEST_KERNEL_CACHE", str(tmp_path / "k"))
    assert kernel.cache_dir() == tmp_path / "k"


# --- Debian fetch: apt output parsing and unpacking of a fake package --------------------------------

APT_DEPENDS = """linux-image-amd64
  Depends: linux-image-6.1.0-57-amd64
"""


def test_image_package_from_apt_cache_depends():
    assert fetch.image_package(APT_DEPENDS, "linux-image-amd64") == "linux-image-6.1.0-57-amd64"


def test_image_package_missing_is_named():
    with pytest.raises(KernelVmError, match="depends on no linux-image-\\* package"):
        fetch.image_package("linux-image-amd64\n  Depends: firmware-linux\n", "linux-image-amd64")


def test_package_version_from_apt_cache_show():
    assert fetch.package_version("Package: linux-image-6.1.0-57-amd64\nVersion: 6.1.192-3\n", "p") == "6.1.192-3"


def fake_apt(tmp_path, monkeypatch, calls, *, have_package=True):
    """apt-get/apt-cache/dpkg-deb/depmod stand-ins: a 'package' is a directory tree copied by dpkg-deb."""
    pkg_tree = tmp_path / "pkgtree"
    bzimage((pkg_tree / "boot").mkdir(parents=True) or pkg_tree / "boot" / "vmlinuz-6.1.0-57-amd64",
            b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP")
    (pkg_tree / "lib/modules/6.1.0-57-amd64/kernel/arch/x86/kvm").mkdir(parents=True)

    def run_tool(argv, cwd=None):
        calls.append(argv)
        if argv[:2] == ["apt-cache", "depends"]:
            if not have_package:
                raise KernelVmError("`apt-cache depends linux-image-amd64` failed (exit 100): E: No packages found")
            return APT_DEPENDS
        if argv[:2] == ["apt-cache", "show"]:
            name = argv[-1]  # as apt reads a name with '.' or '+' that is no package: the first match
            shown = "linux-image-6.1.0-57-amd64-dbg" if name.endswith("+") else name
            section = "debug" if shown.endswith("-dbg") else "kernel"
            return f"Package: {shown}\nSection: {section}\nVersion: 6.1.192-3\n"
        if argv[:2] == ["apt-get", "download"]:
            (Path(cwd) / "linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb").write_text(str(pkg_tree))
            return ""
        if argv[0] == "dpkg-deb":
            import shutil
            shutil.copytree(Path(argv[2]).read_text(), argv[3], dirs_exist_ok=True)
            return ""
        if argv[0] == "depmod":
            (Path(argv[2]) / "lib/modules" / argv[3] / "modules.dep").write_text("")
            return ""
        return ""

    monkeypatch.setattr(fetch, "run_tool", run_tool)


def test_fetch_debian_unpacks_records_and_is_idempotent(tmp_path, monkeypatch):
    calls = []
    fake_apt(tmp_path, monkeypatch, calls)
    cache = tmp_path / "cache"
    got = fetch.fetch_debian(cache, update=False, log=lambda *_: None)
    release_dir = cache / "6.1.0-57-amd64"
    assert got.image == release_dir / "boot/vmlinuz-6.1.0-57-amd64"
    assert got.release == "6.1.0-57-amd64" and got.source == "debian linux-image-6.1.0-57-amd64 6.1.192-3"
    assert (release_dir / "lib/modules/6.1.0-57-amd64/modules.dep").exists()  # depmod -b ran on the cache
    assert ["apt-get", "download", "linux-image-6.1.0-57-amd64=6.1.192-3"] in calls
    assert kernel.resolve("debian", cache=cache) == got
    calls.clear()
    assert fetch.fetch_debian(cache, update=False, log=lambda *_: None) == got
    assert not [c for c in calls if c[:2] == ["apt-get", "download"]], "second fetch downloaded again"


@pytest.mark.parametrize("named, depends", [
    ("linux-image-6.1-amd64", APT_DEPENDS.replace("linux-image-amd64", "linux-image-6.1-amd64")),  # a metapackage
    ("linux-image-6.1.0-57-amd64", "linux-image-6.1.0-57-amd64\n  PreDepends: linux-base\n  Depends: kmod\n"),
])
def test_fetch_debian_of_a_named_package(tmp_path, monkeypatch, named, depends):
    """--package: a metapackage stands for the image it depends on; an image package for itself."""
    calls = []
    fake_apt(tmp_path, monkeypatch, calls)
    real = fetch.run_tool
    monkeypatch.setattr(fetch, "run_tool", lambda argv, cwd=None: depends if argv[:2] == ["apt-cache", "depends"]
                        else real(argv, cwd))
    got = fetch.fetch_debian(tmp_path / "cache", update=False, log=lambda *_: None, package=named)
    assert got.source == "debian linux-image-6.1.0-57-amd64 6.1.192-3"
    assert ["apt-get", "download", "linux-image-6.1.0-57-amd64=6.1.192-3"] in calls


@pytest.mark.parametrize("named, why", [
    ("linux-headers-6.1.0-57-amd64", "expected a Debian linux-image-\\* package name"),
    ("linux-image-6.1;rm", "expected a Debian linux-image-\\* package name"),
    ("", "expected a Debian linux-image-\\* package name"),
    ("linux-image-6.1.0-57-amd64-dbg", "is no kernel image \\(debug symbols"),
    ("linux-image-6.1.+", "apt has no package named exactly 'linux-image-6.1.\\+'"),
])
def test_fetch_debian_refuses_what_is_no_kernel_package_before_downloading(tmp_path, monkeypatch, named, why):
    calls = []
    fake_apt(tmp_path, monkeypatch, calls)
    with pytest.raises(KernelVmError, match=why):
        fetch.fetch_debian(tmp_path / "cache", update=False, log=lambda *_: None, package=named)
    assert not [c for c in calls if c[:2] == ["apt-get", "download"]]


def test_fetch_debian_when_apt_cannot_find_the_package(tmp_path, monkeypatch):
    fake_apt(tmp_path, monkeypatch, [], have_package=False)
    with pytest.raises(KernelVmError, match="apt cannot find linux-image-amd64 .*No packages found"):
        fetch.fetch_debian(tmp_path / "cache", update=False, log=lambda *_: None)


def test_run_tool_names_a_missing_tool(monkeypatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(KernelVmError, match="apt-get not found"):
        fetch.run_tool(["apt-get", "update"])


# --- accelerator and the vng command line -------------------------------------------------------------

def sysfs(tmp_path, **modules):
    for module, nested in modules.items():
        d = tmp_path / module / "parameters"
        d.mkdir(parents=True)
        if nested is not None:
            (d / "nested").write_text(nested + "\n")
    return str(tmp_path)


def test_accelerator_nested_kvm(tmp_path):
    dev = tmp_path / "kvm"
    dev.write_text("")
    assert boot.detect_accelerator(sysfs(tmp_path / "s", kvm_amd="1"), str(dev)) == ("kvm", "kvm_amd.nested=1")


def test_accelerator_tcg_without_nested(tmp_path):
    assert boot.detect_accelerator(sysfs(tmp_path, kvm_intel="N"))[0] == "tcg"
    accel, why = boot.detect_accelerator(sysfs(tmp_path / "pvm", kvm_pvm=None, kvm=None))
    assert accel == "tcg" and "kvm_pvm loaded" in why


K = kernel.Kernel(Path("/cache/6.1/boot/vmlinuz-6.1"), "6.1", "debian", None)


def test_vng_command_tcg_uses_cpu_max_without_kvm():
    cmd = boot.vng_command("vng", K, "tcg", "python -m x", rwdirs=["/r"], append=["kvm_amd.npt=0"])
    assert cmd[:3] == ["vng", "--run", "/cache/6.1/boot/vmlinuz-6.1"]
    assert "--disable-kvm" in cmd and "--qemu-opts=-cpu max" in cmd
    assert cmd[cmd.index("--rwdir") + 1] == "/r"
    appended = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--append"]
    assert appended == ["printk.time=1", "tsc=reliable", "kvm_amd.npt=0"]
    assert cmd[-2:] == ["--exec", "python -m x"]


def test_vng_command_kvm_leaves_kvm_on():
    cmd = boot.vng_command("vng", K, "kvm", "true")
    assert "--disable-kvm" not in cmd and not any(a.startswith("--qemu-opts") for a in cmd)
    assert "tsc=reliable" not in cmd  # nested KVM's TSC is the hardware's: the watchdog stays on


def test_tcg_vm_gets_one_vcpu_unless_told(tmp_path, monkeypatch):
    """Under TCG an SMP guest kernel can livelock in QEMU's multi-threaded TCG (boot.TCG_CPUS)."""
    assert boot.default_cpus("tcg") == 1 and boot.default_cpus("kvm") == 2
    seen = []
    monkeypatch.setattr(vmrun, "watch", lambda cmd, *a, **kw: seen.append(cmd) or boot.VmRun(returncode=1))
    args = cli.build_parser().parse_args(["run", "--report-dir", str(tmp_path)])
    vmrun._boot(args, vmrun.Boot((), tmp_path / "b"), K, "tcg", tmp_path, {"vng": "vng"}, [], 60, 1)
    args.vm_cpus = 2
    vmrun._boot(args, vmrun.Boot((), tmp_path / "b"), K, "tcg", tmp_path, {"vng": "vng"}, [], 60, 1)
    assert [c[c.index("--cpus") + 1] for c in seen] == ["1", "2"]


def test_vng_command_refuses_unknown_accelerator():
    with pytest.raises(KernelVmError, match="accelerator 'hvf'"):
        boot.vng_command("vng", K, "hvf", "true")


# --- crash oracle: console parser and the watchdog ---------------------------------------------------------

def test_console_finds_oops_and_panic_in_a_panic_log():
    c = console.Console()
    events = [e for e in map(c.feed, PANIC_LOG.splitlines()) if e]
    assert [e.kind for e in events] == ["bug", "oops", "panic"]
    assert c.fatal.describe() == "kernel BUG in the VM: BUG: kernel NULL pointer dereference, address: 0000000000000008"
    assert c.last(1) == ["[   88.120010] Kernel panic - not syncing: Fatal exception"]


def test_console_warn_is_not_fatal_and_qemu_abort_is():
    warn = console.classify("[  12.5] WARNING: CPU: 0 PID: 77 at arch/x86/kvm/x86.c:11432 "
                            "kvm_arch_vcpu_ioctl_run+0x5a/0x5e0 [kvm]")
    assert (warn.kind, warn.fatal) == ("warn", False)
    abort = console.classify("qemu: fatal: invalid tss type")
    assert (abort.kind, abort.fatal) == ("qemu-abort", True)
    assert abort.describe() == "QEMU aborted: qemu: fatal: invalid tss type"


def test_console_soft_lockup_is_reported_not_fatal():
    # seen on a loaded 2-core host under TCG: the VM went on once its vCPU threads got CPU time
    e = console.classify("[  116.374685] watchdog: BUG: soft lockup - CPU#0 stuck for 45s! [kvm-nx-lpage-re:252]")
    assert (e.kind, e.fatal) == ("soft-lockup", False)


def test_console_ignores_kernel_words_without_printk_timestamp():
    # a test's own output (no printk timestamp) cannot fake a kernel event
    assert console.classify("FAILED suites/x.py::test_y - Kernel panic - not syncing") is None
    assert console.classify("[    1.0] BUGS: none") is None


def script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "vm.py"
    path.write_text(body)
    return [sys.executable, str(path)]


def test_watch_stops_the_vm_on_a_panic_and_keeps_the_last_lines(tmp_path):
    cmd = script(tmp_path, "import sys, time\nprint('kvmtest-vm: booted 6.1', flush=True)\n"
                 "print('suites/a.py::test_b ', end='', flush=True)\n"
                 f"sys.stderr.write({PANIC_LOG!r}); sys.stderr.flush(); time.sleep(60)\n")
    run = boot.watch(cmd, tmp_path / "console.log", timeout_s=50, stall_s=50)
    assert run.fatal.kind == "bug" and run.ended_by == "bug"
    assert run.seconds < 30, "the VM was not stopped after the panic"
    assert run.in_flight == "suites/a.py::test_b" and "booted" in run.marks
    assert "Kernel panic - not syncing: Fatal exception" in (tmp_path / "console.log").read_text()


def test_watch_stops_a_silent_vm(tmp_path):
    cmd = script(tmp_path, "import time\nprint('kvmtest-vm: booted', flush=True)\ntime.sleep(60)\n")
    run = boot.watch(cmd, tmp_path / "console.log", timeout_s=50, stall_s=2)
    assert run.ended_by == "stall" and run.seconds < 20


# --- verdicts and exit codes -----------------------------------------------------------------------------

def test_param_matrix_one_boot_per_combination():
    assert runner.param_matrix(["kvm_amd.npt=0,1", "kvm.force_emulation_prefix=1"]) == [
        ("kvm_amd.npt=0", "kvm.force_emulation_prefix=1"), ("kvm_amd.npt=1", "kvm.force_emulation_prefix=1")]
    assert runner.param_matrix([]) == [()]  # one boot with no settings


@pytest.mark.parametrize("bad", ["npt=0", "kvm_amd.npt", "kvm_amd.npt=0,,1", ".npt=1"])
def test_param_matrix_refuses_malformed_values(bad):
    with pytest.raises(KernelVmError, match="expected MODULE.PARAM=V1"):
        runner.param_matrix([bad])


def vm_run(**kw):
    return boot.VmRun(returncode=kw.pop("returncode", 0), **kw)


@pytest.mark.parametrize("run, status, kind", [
    (vm_run(), {"stage": "done", "pytest_exit": 0}, "done"),
    (vm_run(returncode=255), None, "no-boot"),
    (vm_run(), {"stage": "no-kvm", "error": "modprobe kvm_amd failed"}, "no-kvm"),
    (vm_run(returncode=255), {"stage": "kvm"}, "vm-exit"),
    (vm_run(ended_by="stall"), {"stage": "kvm"}, "stall"),
    (vm_run(ended_by="timeout"), {"stage": "kvm"}, "timeout"),
    (vm_run(fatal=console.classify("qemu: fatal: invalid tss type")), {"stage": "kvm"}, "qemu-abort"),
    (vm_run(fatal=console.classify("[ 1.0] Kernel panic - not syncing: x")), {"stage": "done"}, "panic"),
])
def test_classify_boot(run, status, kind):
    assert vmrun.classify(run, status, 100, 10)[0] == kind


def junit_file(tmp_path, stem, statuses):
    from kvmtest.reports import junit
    from kvmtest.reports.results import Result
    junit.write(tmp_path / f"{stem}.xml", [junit.suite_from_results(
        [Result("suites.smoke", f"t{i}", s) for i, s in enumerate(statuses)], "kvmtest@vm", "vm", {})])


@pytest.mark.parametrize("kind, pytest_exit, statuses, warnings, bisect, expected", [
    ("done", 0, ["passed", "xfailed"], [], True, 0),
    ("done", 1, ["passed", "failed"], [], True, 1),
    ("done", 0, ["skipped"], [], True, 125),              # nothing ran: untestable
    ("done", 0, ["passed"], ["kernel WARNING in the VM: x"], True, 1),
    ("done", 0, ["passed"], ["RCU stall in the VM: x"], True, 0),   # reported, not a verdict (TCG is slow)
    ("done", 1, ["failed"], [], False, 1),
    ("panic", None, None, [], True, 1),
    ("stall", None, None, [], True, 1),
    ("no-boot", None, None, [], True, 125),
    ("no-kvm", None, None, [], True, 125),
    ("qemu-abort", None, None, [], True, 125),
    ("no-boot", None, None, [], False, 2),
])
def test_boot_exit_codes(tmp_path, kind, pytest_exit, statuses, warnings, bisect, expected):
    if statuses:
        junit_file(tmp_path, "b", statuses)
    b = vmrun.Boot((), tmp_path / "b", kind=kind, pytest_exit=pytest_exit, warnings=warnings,
                   kernel_warns=sum(w.startswith("kernel WARNING") for w in warnings))
    assert runner.boot_code(b, bisect) == expected


def test_overall_bisect_code():
    assert runner.overall_code([0, 0], True) == 0
    assert runner.overall_code([0, 125], True) == 125
    assert runner.overall_code([125, 1], True) == 1


def test_stand_in_junit_names_the_crash_and_the_last_lines(tmp_path):
    run = vm_run(returncode=255, tail=["[ 9.0] Oops: 0000 [#1] SMP", "[ 9.1] Kernel panic - not syncing: x"],
                 in_flight="suites/paging/test_access.py::test_access[paging32-4k]")
    b = vmrun.Boot(("kvm_amd.npt=0",), tmp_path / "b", kind="panic", message="kernel panic in the VM: x", run=run)
    vmrun.stand_in_junit(b, K, "tcg")
    (r,) = read_junit(tmp_path / "b.xml")
    assert (r.status, r.name, r.message) == ("error", "boot[kvm_amd.npt=0]", "kernel panic in the VM: x")
    assert "test in flight: suites/paging/test_access.py::test_access[paging32-4k]" in r.details
    assert "Kernel panic - not syncing: x" in r.details


def test_matrix_suites_are_named_after_their_settings(tmp_path):
    for stem in ("a", "b"):
        junit_file(tmp_path, stem, ["passed"])
    vmrun.name_suites(tmp_path / "a.xml", vmrun.Boot(("kvm_amd.npt=0",), tmp_path / "a"))
    vmrun.name_suites(tmp_path / "b.xml", vmrun.Boot(("kvm_amd.npt=1",), tmp_path / "b"))
    vmrun.merge_suites([tmp_path / "a.xml", tmp_path / "b.xml"], tmp_path / "all.xml")
    import xml.etree.ElementTree as ET
    names = [s.get("name") for s in ET.parse(tmp_path / "all.xml").getroot()]
    assert names == ["kvmtest@vm [kvm_amd.npt=0]", "kvmtest@vm [kvm_amd.npt=1]"]
    assert len(read_junit(tmp_path / "all.xml")) == 2


def test_run_kernel_bisect_125_when_the_kernel_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("KVMTEST_KERNEL_CACHE", str(tmp_path))
    assert cli.main(["run", "--kernel", "debian", "--bisect", "--report-dir", str(tmp_path)]) == 125
    assert cli.main(["run", "--kernel", str(tmp_path / "nope"), "--report-dir", str(tmp_path)]) == 2


# --- inside the VM ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, module", [("fpu svm npt", "kvm_amd"), ("fpu vmx ept", "kvm_intel"), ("fpu", None)])
def test_vendor_module_from_cpuinfo(flags, module):
    assert inner.vendor_module(f"processor\t: 0\nflags\t\t: {flags}\n") == module


def test_session_args_keep_default_suites(tmp_path):
    """'-pno:cacheprovider' is one token: a bare 'no:cacheprovider' would read as a test path and
    stop `kvmtest run` from adding the default suites."""
    args = cli.build_parser().parse_args(["run", "--report-dir", str(tmp_path)])
    out = vmrun.session_args(args, [], tmp_path / "b", tmp_path)
    assert "-pkvmtest.kernelvm.progress" in out
    assert not [a for a in out[out.index("-j") + 2:] if not a.startswith("-")]


def test_session_args_for_suspects_run_them_alone(tmp_path):
    args = cli.build_parser().parse_args(["run", "--report-dir", str(tmp_path)])
    # pytest options as single tokens (-ksmoke, --kvm-modes=real), as for `kvmtest run`: bare words are targets
    out = vmrun.session_args(args, ["-ksmoke", "suites/smoke"], tmp_path / "b", tmp_path, ["suites/a.py::t[x]"])
    assert out[out.index("-j") + 1] == "0" and out[-2:] == ["-ksmoke", "suites/a.py::t[x]"]
    assert "suites/smoke" not in out


# --- crash, resume in a fresh VM, one report: a fake `vng` whose "VM" is a process --------------------

FAKE_VNG = """\
import json, os, subprocess, sys
argv = sys.argv[1:]
spec = json.load(open(argv[argv.index("--exec") + 1].split()[-1]))
def status(**kw):
    open(spec["status"], "w").write(json.dumps(kw))
print("kvmtest-vm: booted fake uptime 0.1s", flush=True)
status(stage="booted")
print("kvmtest-vm: kvm fake", flush=True)
status(stage="kvm")
env = dict(os.environ, KVMTEST_VM_PROGRESS=spec["progress"])
for run_args in spec["sessions"]:
    code = subprocess.call([sys.executable, "-m", "kvmtest.cli", "run", *run_args], env=env)
print("kvmtest-vm: done pytest exit %d" % code, flush=True)
status(stage="done", pytest_exit=code)
"""

DEMO_TESTS = """\
import os, time

def test_a():
    pass

def test_b_panics():
    os.write(2, b"[   42.000001] Kernel panic - not syncing: demo trigger\\n")
    time.sleep(60)

def test_c():
    pass

def test_d_fails():
    assert 1 == 2, "expected 2, observed 1"
"""


def fake_vm_files(tmp_path):
    """(the fake vng, the demo test folder, an empty report folder) under `tmp_path`."""
    vng = tmp_path / "vng"
    vng.write_text(f"#!{sys.executable}\n{FAKE_VNG}")
    vng.chmod(0o755)
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "test_demo.py").write_text(DEMO_TESTS)
    reports = tmp_path / "reports"
    reports.mkdir()
    return vng, demo, reports


def assert_console_reports_exist_or_are_intermediate(reports: Path, b: "vmrun.Boot") -> list[str]:
    """Every "kvmtest report:" line the VMs printed (kept in the console logs) names a file that is
    there after the run, or says it is intermediate and names the configuration's merged reports,
    which are there. Returns the lines."""
    lines = [line for log in sorted(reports.glob("*console.log")) for line in log.read_text().splitlines()
             if "kvmtest report:" in line]
    for line in lines:
        path = Path(re.search(r"kvmtest report: (?:JUnit|KTAP|HTML) (\S+)", line).group(1))
        merged = f"(intermediate: kvmtest merges this session's results into {b.stem}.xml, .ktap and .html"
        assert path.exists() or merged in line, f"the console points at {path}, which is gone: {line}"
    for ext in (".xml", ".ktap", ".html"):
        assert b.path(ext).exists()
    return lines


def test_a_panic_costs_one_test_and_the_run_goes_on(tmp_path):
    vng, demo, reports = fake_vm_files(tmp_path)
    args = cli.build_parser().parse_args(["run", "--report-dir", str(reports), "-j", "0", "--vm-stall", "60",
                                          "--vm-timeout", "240"])
    b = vmrun.run_config(args, ["-s", "-pno:cacheprovider", str(demo)], K, "tcg", (), reports, {"vng": str(vng)})
    assert [k for k, _, _ in b.boots] == ["panic", "done"], b.boots
    assert [kind for _, kind in b.crashes] == ["panic"] and b.crashes[0][0].endswith("test_demo.py::test_b_panics")
    results = {r.name: r for r in read_junit(b.path(".xml"))}
    assert {n: r.status for n, r in results.items()} == {
        "test_a": "passed", "test_b_panics": "error", "test_c": "passed", "test_d_fails": "failed"}
    assert results["test_b_panics"].message.startswith(
        "kernel panic in the VM: Kernel panic - not syncing: demo trigger (the VM died while this test ran")
    assert "Kernel panic - not syncing: demo trigger" in results["test_b_panics"].details
    assert results["test_d_fails"].message == "AssertionError: expected 2, observed 1"
    assert runner.boot_code(b, bisect=False) == 1 and runner.boot_code(b, bisect=True) == 1
    ktap_text = b.path(".ktap").read_text()
    # KTAP names are the JUnit ids, whose module part depends on where pytester put the demo
    not_ok = [line.strip() for line in ktap_text.splitlines() if line.strip().startswith("not ok ")]
    for number, test in ((2, "test_demo::test_b_panics"), (4, "test_demo::test_d_fails")):
        assert any(line.startswith(f"not ok {number} ") and line.split(" #")[0].endswith(test)
                   for line in not_ok), not_ok
    assert not list(reports.glob("*.boot2.xml")), "per-boot JUnit left beside the merged one"
    lines = assert_console_reports_exist_or_are_intermediate(reports, b)
    assert len(lines) == 3 and all(".boot2." in line for line in lines), lines  # the first boot died in a test


def test_a_configuration_split_over_two_vms_runs_each_test_once_and_resumes_per_shard(tmp_path):
    """--vm-shards 2: each VM runs every other test; the VM that panics resumes on its own; one report."""
    vng, demo, reports = fake_vm_files(tmp_path)
    args = cli.build_parser().parse_args(["run", "--report-dir", str(reports), "--vm-stall", "60",
                                          "--vm-timeout", "240"])
    args.vm_shards, args.vm_cpus = 2, 1
    b = vmrun.run_config(args, ["-s", "-pno:cacheprovider", str(demo)], K, "tcg", ("kvm_amd.npt=0",), reports,
                         {"vng": str(vng)})
    # shard 1 runs test_a and test_c; shard 2 test_b_panics, then in a fresh VM test_d_fails
    ended = sorted(zip(b.boot_shards, [k for k, _, _ in b.boots], strict=True))
    assert ended == [(1, "done"), (2, "done"), (2, "panic")]
    assert b.kind == "done" and b.wall_s > 0
    assert [kind for _, kind in b.crashes] == ["panic"] and b.crashes[0][0].endswith("test_demo.py::test_b_panics")
    results = read_junit(b.path(".xml"))
    assert sorted((r.name, r.status) for r in results) == [
        ("test_a", "passed"), ("test_b_panics", "error"), ("test_c", "passed"), ("test_d_fails", "failed")]
    assert b.pytest_exit == 1 and runner.boot_code(b, bisect=True) == 1
    left = sorted(p.name.split(".shard")[1] for p in reports.glob("*.shard*"))
    assert left == ["1.console.log", "2.boot2.console.log", "2.console.log"], "shard files beside the merged report"
    lines = assert_console_reports_exist_or_are_intermediate(reports, b)
    assert len(lines) == 6 and all(".shard" in line for line in lines), lines  # shard 1's boot, shard 2's second
    s = json.loads(runner.write_summary(b, "tcg", K).read_text())
    assert s["shards"] == 2 and sorted(x["shard"] for x in s["boots"]) == [1, 2, 2]


def test_shards_take_every_nth_test_and_refuse_a_bad_spec():
    items = list("abcdefg")
    assert progress.shard_items(items, (1, 3)) == (["a", "d", "g"], ["b", "c", "e", "f"])
    assert progress.shard_items(items, (3, 3))[0] == ["c", "f"]
    assert progress.shard_items(items, None) == (items, [])
    assert progress.shard_value("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected K/N"):
            progress.shard_value(bad)


def test_default_shards_follow_host_cpus_and_memory_under_tcg_only():
    assert boot.default_shards("tcg", 1, "2G", host_cpus=2, available=24 << 30) == 2
    assert boot.default_shards("tcg", 1, "2G", host_cpus=16, available=5 << 30) == 2  # memory for two VMs
    assert boot.default_shards("tcg", 2, "2G", host_cpus=2, available=24 << 30) == 1
    assert boot.default_shards("tcg", 1, "4096M", host_cpus=8, available=1 << 30) == 1
    assert boot.default_shards("kvm", 2, "2G", host_cpus=64, available=1 << 40) == 1
    assert boot.memory_bytes("2G") == 2 << 30 and boot.memory_bytes("512") == 512 << 20


def test_more_shards_than_memory_holds_are_refused():
    assert runner.shards_too_many(2, "2G", available=24 << 30) == ""
    why = runner.shards_too_many(64, "2G", available=23 << 30)
    assert why.startswith("64 VMs of 2G need 131072 MiB at once, more than the host's MemAvailable (23552 MiB)")
    assert runner.shards_too_many(64, "2G", available=0) == ""  # MemAvailable unreadable: not checked


def test_shards_split_the_tests_left_after_keyword_deselection(tmp_path):
    """-k deselects first; each shard then gets every N-th of what is left (progress.py, trylast)."""
    import subprocess
    demo = tmp_path / "test_k.py"
    # picks at 0 and 2: sharded before -k, both would land in shard 1 and shard 2 would get none
    demo.write_text("".join(f"def test_{i}_{'pick' if i in (0, 2) else 'other'}():\n    pass\n" for i in range(6)))
    ran = []
    for k in (1, 2):
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:kvmtest",
                              "-pkvmtest.kernelvm.progress", f"--kvm-vm-shard={k}/2", "-kpick", "-rA", str(demo)],
                             capture_output=True, text=True, cwd=tmp_path).stdout
        ran.append(re.findall(r"PASSED \S*::(test_\w+)", out))
    assert ran == [["test_0_pick"], ["test_2_pick"]], ran


def test_a_resumed_shard_keeps_its_first_sessions_tests_by_id_though_the_collection_changed(tmp_path):
    """The first session logs the tests its shard kept; a resumed one (a fresh VM) keeps those by id,
    not every N-th by position: with a test added to the shared tree in between, position would hand it
    the other shard's tests and leave its own unrun."""
    import subprocess
    demo = tmp_path / "test_r.py"
    demo.write_text("".join(f"def test_{i}():\n    pass\n" for i in range(6)))
    log = tmp_path / "progress.jsonl"
    env = {**os.environ, progress.ENV: str(log)}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:kvmtest",
            "-pkvmtest.kernelvm.progress", "--kvm-vm-shard=1/2", "-rA", str(demo)]
    first = subprocess.run(argv + ["-k", "not test_4"], capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert re.findall(r"PASSED \S*::(test_\w+)", first) == ["test_0", "test_2", "test_5"], first  # after -k
    assert progress.selected(progress.read(log)) == [f"{demo.name}::test_{i}" for i in (0, 2, 5)]
    assert progress.expected(progress.read(log)) == {f"{demo.name}::test_{i}" for i in (0, 1, 2, 3, 5)}
    # the tree changes (a test inserted at the top) and the shard resumes: it still owns test_0, test_2 and
    # test_5, all done, so nothing runs; by position it would have run test_new, test_1 and test_3
    demo.write_text("def test_new():\n    pass\n" + demo.read_text())
    again = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert re.findall(r"PASSED \S*::(test_\w+)", again) == [], again


def test_a_selected_test_no_session_reported_is_an_error_in_the_rebuilt_report():
    from kvmtest.kernelvm import resume
    entries = [{"session": {}}, {"selected": ["t.py::test_a", "t.py::test_b"]}]
    outs = resume.outcomes(entries)
    assert set(outs) == {"t.py::test_a", "t.py::test_b"}
    assert all(o.status == "error" and o.message == resume.UNRUN_TEXT for o in outs.values())


def test_every_vms_tests_are_accounted_for_in_a_split_runs_report():
    """The host joins all VMs' logs: a test the second VM selected and never reported, or one only a VM whose
    collection differed saw, is an error, not absent (each VM logs what it selected and what it collected)."""
    from kvmtest.kernelvm import resume
    vm1 = [{"session": {}}, {"selected": ["t.py::a", "t.py::c"], "collected": ["t.py::a", "t.py::b", "t.py::c"]}]
    vm2 = [{"session": {}}, {"selected": ["t.py::b", "t.py::d"],
                             "collected": ["t.py::a", "t.py::b", "t.py::c", "t.py::d"]}]
    outs = resume.outcomes(vm1 + vm2)
    assert sorted(outs) == ["t.py::a", "t.py::b", "t.py::c", "t.py::d"]
    assert {o.status for o in outs.values()} == {"error"}


def test_shard_exit_combines_the_vms_verdicts():
    assert vmrun.shard_exit(1, [0, 0]) == 1
    assert vmrun.shard_exit(0, [0, 5]) == 0      # one VM got none of a short selection
    assert vmrun.shard_exit(0, [5, 5]) == 5      # nothing selected anywhere
    assert vmrun.shard_exit(0, [0, 4]) == 4      # a usage error stands
    assert vmrun.shard_exit(0, [None, 0]) == 0   # a crashed shard's results are in the rebuilt reports


def test_a_one_vcpu_vm_runs_pytest_without_xdist_workers(tmp_path):
    args = cli.build_parser().parse_args(["run", "--report-dir", str(tmp_path)])
    args.vm_cpus = 1
    assert vmrun.vm_jobs(args, "tcg") == "0"
    args.vm_cpus = 4
    assert vmrun.vm_jobs(args, "tcg") == "4"
    args.jobs = "2"
    assert vmrun.vm_jobs(args, "tcg") == "2"   # -j as given
    out = vmrun.session_args(args, [], tmp_path / "b", tmp_path, jobs="0", shard=(2, 3))
    assert out[out.index("-j") + 1] == "0" and "--kvm-vm-shard=2/3" in out
    suspects = vmrun.session_args(args, [], tmp_path / "b", tmp_path, ["t.py::x"], jobs="0", shard=(2, 3))
    assert not any(a.startswith("--kvm-vm-shard") for a in suspects)


def test_progress_log_holds_phase_reports_until_teardown(tmp_path):
    log = progress._Log(tmp_path / "p.jsonl")
    log.write({"start": "t.py::a"})
    log.pending.append({"report": serialized("t.py::a", "setup")})
    assert progress.in_flight(progress.read(log.path)) == ["t.py::a"]
    log.write({"report": serialized("t.py::a", "teardown")})
    assert [e["report"]["when"] for e in progress.read(log.path) if "report" in e] == ["setup", "teardown"]
    log.pending.append({"report": serialized("t.py::b", "setup")})
    log.close()
    assert progress.read(log.path)[-1]["report"]["nodeid"] == "t.py::b" and log.file is None


def serialized(nodeid, when, outcome="passed", longrepr=None):
    return pytest.TestReport(nodeid, ("t.py", 0, nodeid), {}, outcome, longrepr, when)._to_json()


def test_progress_in_flight_is_started_minus_finished():
    entries = [{"session": {}}, {"start": "t.py::a"}, {"report": serialized("t.py::a", "teardown")},
               {"start": "t.py::b"}, {"start": "t.py::c"}]
    assert progress.in_flight(entries) == ["t.py::b", "t.py::c"]
    entries.append({"crash": "t.py::b", "what": "panic", "message": "m"})
    assert progress.in_flight(entries) == ["t.py::c"]
    assert progress.finished(entries) == {"t.py::a", "t.py::b"}


def test_progress_log_drops_a_line_cut_short(tmp_path):
    log = tmp_path / "p.jsonl"
    progress.append(log, {"start": "t.py::a"})
    with open(log, "a") as f:
        f.write('{"report": {"nodeid": "t.py::a", "wh')  # the VM died mid-write
    assert progress.read(log) == [{"start": "t.py::a"}]


def test_bisect_skips_when_only_qemu_aborted(tmp_path):
    from kvmtest.reports import junit as junit_mod
    from kvmtest.reports.results import Result
    junit_mod.write(tmp_path / "b.xml", [junit_mod.suite_from_results(
        [Result("suites.smoke.test_smoke", "t[pm32-cpl3]", "error"), Result("suites.smoke.test_smoke", "u", "passed")],
        "s", "vm", {})])
    b = vmrun.Boot((), tmp_path / "b", kind="done", pytest_exit=1,
                   crashes=[("suites/smoke/test_smoke.py::t[pm32-cpl3]", "qemu-abort")])
    assert runner.boot_code(b, bisect=True) == 125
    b.crashes = [("suites/smoke/test_smoke.py::t[pm32-cpl3]", "panic")]
    assert runner.boot_code(b, bisect=True) == 1


def test_summary_json_gives_boots_counts_and_crashes_and_the_benchmark_reads_it(tmp_path, capsys):
    import importlib.util
    stem = "kvmtest-vm-tcg-6.1.0-57-amd64-kvm_amd.npt0-20261130-120000"  # dots in the stem, as the runner names it
    junit_file(tmp_path, stem, ["passed", "passed", "xfailed", "error"])
    b = vmrun.Boot(("kvm_amd.npt=0",), tmp_path / stem, kind="done", pytest_exit=1,
                   crashes=[("suites/x.py::test_b", "qemu-abort")],
                   boots=[("qemu-abort", 30.0, 100.0), ("done", 28.5, 40.25)])
    path = runner.write_summary(b, "tcg", K)
    assert path.name == stem + ".summary.json"
    s = json.loads(path.read_text())
    assert s["counts"] == {"error": 1, "passed": 2, "xfailed": 1}
    assert s["boots"] == [{"ended": "qemu-abort", "boot_s": 30.0, "tests_s": 100.0},
                          {"ended": "done", "boot_s": 28.5, "tests_s": 40.2}]
    assert (s["kvm_params"], s["accelerator"], s["crashes"]) == (
        ["kvm_amd.npt=0"], "tcg", [{"test": "suites/x.py::test_b", "kind": "qemu-abort"}])
    spec = importlib.util.spec_from_file_location("bench", BENCH_UPSTREAM_HOST)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--from", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("kvm_amd.npt=0"))
    # accel, VMs, boots, boot s, tests s, wall s, total
    assert line.split()[1:8] == ["tcg", "1", "2", "58", "140", "-1", "4"]
    assert "the VM died in suites/x.py::test_b (qemu-abort)" in out


def test_benchmark_counts_host_skips_that_got_a_verdict_upstream(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench", BENCH_UPSTREAM_HOST)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    junit_file(tmp_path, "host", ["skipped", "xfailed", "passed", "skipped", "xfailed"])
    junit_file(tmp_path, "vm", ["passed", "failed", "passed", "error", "xfailed"])
    summary = {"kvm_params": ["kvm_amd.npt=1"], "junit": str(tmp_path / "vm.xml")}
    text = bench.new_verdicts([summary], str(tmp_path / "host.xml"))
    assert "of the 4 checks that skip or xfail" in text
    assert "[kvm_amd.npt=1] 3 got a verdict (1 passed), 1 xfailed as known issues" in text


def test_heartbeat_names_tests_in_flight_until_their_limit():
    running = {"suites/a.py::t_slow": 100.0, "suites/a.py::t_stuck": 0.0}
    assert progress.heartbeat_lines(running, 1000.0, 1800.0) == [
        "kvmtest-vm: heartbeat: suites/a.py::t_slow running for 900 s",
        "kvmtest-vm: heartbeat: suites/a.py::t_stuck running for 1000 s"]
    # past the limit a test gets no heartbeat, so console silence ends it as a stall
    assert progress.heartbeat_lines(running, 1850.0, 1800.0) == [
        "kvmtest-vm: heartbeat: suites/a.py::t_slow running for 1750 s"]
    assert progress.heartbeat_lines({}, 5.0, 1800.0) == []


@pytest.mark.parametrize("spec, why", [
    ("kvm amd.npt=1", "names are letters"),
    ("kvm_amd.npt=a b", "not one kernel command-line word"),
    ('kvm_amd.npt="1"', "not one kernel command-line word"),
    ("kvm_amd.npt=0;rm", "not one kernel command-line word"),
    ("kvm_amd.npt=0,1,0", "listed twice"),
])
def test_param_matrix_refuses_what_the_kernel_command_line_would_mangle(spec, why):
    with pytest.raises(KernelVmError, match=why):
        runner.param_matrix([spec])


@pytest.mark.parametrize("argv, why", [
    (["--kernel", ""], "--kernel ''"),
    (["--kernel", "debian", "--vm-timeout", "-5"], "--vm-timeout -5.0: expected seconds"),
    (["--kernel", "debian", "--vm-stall", "0"], "--vm-stall 0.0: expected seconds"),
    (["--kernel", "debian", "--vm-max-crashes", "-1"], "--vm-max-crashes -1"),
    (["--kernel", "debian", "--vm-memory", "0"], "--vm-memory '0'"),
    (["--kernel", "debian", "--vm-memory", "lots"], "--vm-memory 'lots'"),
])
def test_vm_options_that_cannot_mean_anything_are_refused(argv, why):
    args = cli.build_parser().parse_args(["run", *argv])
    with pytest.raises(KernelVmError, match=re.escape(why)):
        runner.check_vm_options(args)


@pytest.mark.parametrize("argv", [["--kvm-param", "kvm_amd.npt=0"], ["--accel", "tcg"], ["--vm-cpus", "4"]])
def test_vm_options_without_kernel_are_refused(argv, capsys):
    assert cli.main(["run", *argv, "suites/smoke"]) == 2
    assert "add --kernel PATH|debian" in capsys.readouterr().err


def test_sigterm_stops_the_vm_it_started(tmp_path):
    # a "VM" that ignores nothing and runs for a minute, in its own session as vng's would
    import os
    import signal
    import subprocess
    import time
    vm = tmp_path / "vm.py"
    vm.write_text("import time, os\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n")
    pid_file = tmp_path / "pid"
    code = f"""
import signal, sys
from pathlib import Path
from kvmtest.kernelvm import boot, runner
signal.signal(signal.SIGTERM, runner._terminate)
def echo(line):
    Path({str(pid_file)!r}).write_text(line)
boot.watch([sys.executable, {str(vm)!r}], Path({str(tmp_path / 'log')!r}), timeout_s=120, stall_s=120, echo=echo)
"""
    kvmtest = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    vm_pid = int(pid_file.read_text())
    kvmtest.send_signal(signal.SIGTERM)
    assert kvmtest.wait(30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(vm_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(vm_pid, signal.SIGKILL)
    raise AssertionError("the VM's process outlived a SIGTERM to kvmtest")
