"""kvmtest.host_shards: `kvmtest run -j N` as N pytest processes each running every N-th test, their
JUnit merged into the run's reports (no /dev/kvm needed: the demo tests touch no KVM)."""

import signal
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmtest import host_shards
from kvmtest.reports.results import read_junit

DEMO = """import os, signal, pytest

def test_a_pass():
    pass

def test_b_fail():
    assert 1 == 2, "expected 2, observed 1"

def test_c_skip():
    pytest.skip("not here")

@pytest.mark.xfail(reason="known", strict=True)
def test_d_xfail():
    assert False

@pytest.mark.parametrize("i", range(4))
def test_e_param(i):
    if os.environ.get("DEMO_KILL") == str(i):
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("options,ok", [
    ([], True),
    ([("-k", "smoke"), ("-m", "not slow"), ("--kvm-modes", "long64"), ("-q", None), ("-v", None)], True),
    ([("-kexpr_with_x", None)], True),      # -k's value may hold any letter
    ([("-x", None)], False), ([("-sx", None)], False), ([("--exitfirst", None)], False),
    ([("--maxfail", "3")], False), ([("--pdb", None)], False), ([("--lf", None)], False),
    ([("--collect-only", None)], False), ([("--sw", None)], False),
])
def test_only_options_every_shard_can_honour_allow_shards(options, ok):
    assert host_shards.shardable(options) is ok


def test_a_shard_drops_xdist_and_the_report_options_and_takes_its_share(tmp_path):
    argv = ["suites", "-v", "--kvm-junit=r/x.xml", "--kvm-ktap=r/x.ktap", "--kvm-html=r/x.html",
            "--kvm-report-dir=r", "--kvm-baseline=old.xml", "--kvm-device=/dev/kvm", "-n", "2", "-k", "smoke"]
    out = host_shards.shard_argv(argv, 2, 3, tmp_path / "s2.xml", Path("r/x"))
    assert out == ["suites", "-v", "--kvm-device=/dev/kvm", "-k", "smoke", "-p", "no:xdist",
                   "-p", "kvmtest.kernelvm.progress", "--kvm-vm-shard=2/3", "--kvm-vm-merged-into=r/x",
                   f"--kvm-junit={tmp_path / 's2.xml'}"]


def _run(tmp_path, monkeypatch, n, capsys):
    (tmp_path / "test_demo.py").write_text(DEMO)
    monkeypatch.chdir(tmp_path)
    paths = {kind: tmp_path / "r" / f"run.{suffix}" for kind, suffix in (("junit", "xml"), ("ktap", "ktap"),
                                                                          ("html", "html"))}
    code = host_shards.run(["test_demo.py", "-p", "no:cacheprovider", "-p", "no:randomly"], n, paths,
                           {"host": "demo-host", "kernel": {"release": "6.1"}})
    return code, paths, capsys.readouterr().out


def test_shards_run_every_test_once_and_the_reports_hold_them_all(tmp_path, monkeypatch, capsys):
    code, paths, out = _run(tmp_path, monkeypatch, 2, capsys)
    status = {f"{r.classname}::{r.name}": r.status for r in read_junit(paths["junit"])}
    assert status == {"test_demo::test_a_pass": "passed", "test_demo::test_b_fail": "failed",
                      "test_demo::test_c_skip": "skipped", "test_demo::test_d_xfail": "xfailed",
                      **{f"test_demo::test_e_param[{i}]": "passed" for i in range(4)}}
    assert code == 1  # a test failed
    assert "[1/2] " in out and "[2/2] " in out and "deselected" in out
    assert "kvmtest run: 2 shards: 1 failed, 5 passed, 1 skipped, 1 xfailed" in out
    assert "ok 1 " in paths["ktap"].read_text() and "test_b_fail" in paths["html"].read_text()
    suite = ET.parse(paths["junit"]).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("8", "1", "2")
    assert not list(paths["junit"].parent.glob(".kvmtest-shards-*"))  # the shards' own files are gone


def test_a_shard_that_dies_is_an_error_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEMO_KILL", "1")
    code, paths, _ = _run(tmp_path, monkeypatch, 2, capsys)
    results = read_junit(paths["junit"])
    lost = [r for r in results if r.classname == "kvmtest-shard"]
    assert len(lost) == 1 and lost[0].status == "error"
    assert f"killed by signal {signal.SIGKILL}" in lost[0].message and "its tests have no verdict" in lost[0].message
    assert code == 1
