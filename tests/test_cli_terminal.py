"""`kvmtest run` and `kvmtest info` as read at a terminal: the help names the --kvm-* options and
says where other arguments go, the host line and report paths print once, pytest's -ra summary
is kept, and `info` shows what KVM lets a guest have next to the host's CPU flags."""

import argparse

from kvmtest import cli, cpu_support
from kvmtest.options import OPTIONS


def test_run_help_lists_the_plugin_options_and_where_arguments_go(capsys):
    assert cli.main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    assert "goes to pytest unchanged" in " ".join(text.split())
    for opt in OPTIONS:
        assert opt.flag in text and opt.env_name in text, opt.flag


def test_run_keeps_pytests_full_summary(tmp_path):
    args = argparse.Namespace(report_dir=str(tmp_path), junit="", ktap="", html="", device="/dev/kvm", baseline=[],
                              jobs="0", bisect=False)
    argv, _ = cli.pytest_args(args, ["tests/test_terminal.py"], {"host": "h", "kernel": {"release": "6.18"}})
    assert "-ra" in argv and not any(a.startswith("-r") and a != "-ra" for a in argv), argv


def test_run_prints_the_host_and_each_report_path_once(tmp_path, capfd, monkeypatch):
    for var in ("KVMTEST_GUEST_TIMEOUT", "KVMTEST_KNOWN_ISSUES", "KVMTEST_MODES", "KVMTEST_REPORT_DIR",
                "KVMTEST_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    test = tmp_path / "test_one.py"
    test.write_text("def test_one():\n    pass\n")
    # the default device: a named one that is missing is refused (tests/test_cli_bad_input.py)
    code = cli.main(["run", "-j", "0", "--report-dir", str(tmp_path / "reports"),
                     str(test), "-p", "no:cacheprovider", f"--rootdir={tmp_path}"])
    out = capfd.readouterr().out
    assert code == 0, out
    assert sum("backend " in line and "MMU " in line for line in out.splitlines()) == 1, out
    reports = sorted((tmp_path / "reports").iterdir())
    assert len(reports) == 3
    for path in reports:
        assert sum(str(path) in line for line in out.splitlines() if not line.startswith("kvmtest run: pytest")) == 1, \
            (path, out)


def test_guest_cpu_lines_explain_host_flags_kvm_does_not_report():
    lines = cpu_support.lines(host={"fpu", "smep", "smap", "pdpe1gb", "tsc_deadline_timer"},
                              supported={"fpu", "tsc_deadline"}, emulated={"movbe"})
    text = "\n".join(lines)
    assert "on the host CPU but not reported by KVM: smep smap pdpe1gb " in text, text
    assert "emulated only (KVM_GET_EMULATED_CPUID): movbe" in text
    reported = next(line for line in lines if "reported:" in line and "not" not in line)
    assert reported.split(":", 1)[1].split() == ["fpu", "tsc_deadline"]


class FakeKvm:
    """KVM reporting fpu and pae only, emulating movbe (what kvm_features asks of a Kvm)."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def has_feature(self, name):
        return name in ("fpu", "pae")

    def emulated_cpuid(self):
        from kvmtest.abi import structs as S

        entry = S.kvm_cpuid_entry2(function=1, index=0, ecx=1 << 22)  # CPUID.1:ECX[22] MOVBE
        return [entry]


def test_info_shows_what_kvm_reports_next_to_the_host_flags(capsys, monkeypatch):
    from kvmtest import fingerprint, kvm

    fp = fingerprint.collect("/nonexistent/kvm")
    fp["kvm"] = {"api_version": 12, "capabilities": {}, "supported_cpuid_sha256": "0" * 64}
    monkeypatch.setattr(cli.fpmod, "collect", lambda device: fp)
    monkeypatch.setattr(kvm, "Kvm", FakeKvm)
    monkeypatch.setattr(cpu_support, "host_flags", lambda: {"fpu", "pae", "smap", "movbe"})
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "reported:     fpu pae\n" in out
    assert "on the host CPU but not reported by KVM: movbe smap " in out, out
    assert "emulated only (KVM_GET_EMULATED_CPUID): movbe" in out


def test_host_flags_reads_the_first_cpu():
    text = "processor\t: 0\nflags\t\t: fpu smap\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert cpu_support.host_flags(text) == {"fpu", "smap"}
