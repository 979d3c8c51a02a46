"""The HTML report as a KVM developer reads it: distinct marks per outcome with a legend, the run
date, failures first with their diagnostics, known-issue ids linked to their evidence, skips
grouped, the fingerprint folded, nothing loaded from anywhere; checked in headless Chromium."""

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from kvmtest import known_issues as ki
from kvmtest.reports import html as html_report
from kvmtest.reports.results import Result

ISSUE = textwrap.dedent("""\
    [[issue]]
    id = "pvm-demo-iret"
    tests = ["suites/modes/test_x.py::test_iret[*"]
    reason = "IRET in 32-bit protected mode ends KVM_RUN with KVM_EXIT_INTERNAL_ERROR"
    [issue.host]
    module = "kvm_pvm"
    [issue.evidence]
    contract = "SDM Vol. 2A IRET: returns from the handler"
    observed = "KVM_EXIT_INTERNAL_ERROR suberror 1 at the IRET"
    proof = "the same guest at CPL3 in long64 passes"
    """)
FP = {"host": "lab7", "kernel": {"release": "6.18.44", "version": "#1 SMP"}, "cpu": {"vendor": "AuthenticAMD"},
      "modules": {"kvm": {"tdp_mmu": "N"}}, "kvm": {"capabilities": {"KVM_CAP_IRQCHIP": 1}}}


def _results() -> list[Result]:
    issue = (("known_issue", "pvm-demo-iret"),)
    return [
        Result("suites.modes.test_x", "test_iret[pm32]", "xfailed", "known issue pvm-demo-iret: IRET fails",
               properties=(("cpu_mode", "pm32"),) + issue),
        Result("suites.modes.test_x", "test_iret[pm16]", "xpassed", "XPASS: known issue pvm-demo-iret",
               properties=(("cpu_mode", "pm16"),) + issue),
        Result("suites.modes.test_x", "test_out[long64]", "passed", properties=(("cpu_mode", "long64"),)),
        Result("suites.paging.test_p", "test_walk[long64]", "failed", "expected #PF(0x3), observed no fault",
               "test_p.py:12: AssertionError", properties=(("cpu_mode", "long64"),),
               sections=(("kvmtest trace", "KVM_RUN vcpu0 -> KVM_EXIT_HLT"),
                         ("guest test_walk[long64] (long64)", "guest state (mode long64): rip=0x8004 cr2=0x0"),
                         ("kernel log (KVM)", "kvm: vcpu0 unhandled rdmsr: 0x123"))),
        Result("suites.paging.test_p", "test_smap[pm32]", "skipped",
               "Skipped: CR4.SMAP needs the smap CPUID bit, which KVM does not report",
               properties=(("cpu_mode", "pm32"),)),
        Result("suites.paging.test_p", "test_smap[long64]", "skipped",
               "CR4.SMAP needs the smap CPUID bit, which KVM does not report", properties=(("cpu_mode", "long64"),)),
    ]


@pytest.fixture
def page(tmp_path) -> str:
    issues = ki.load_text(ISSUE, Path("kvm_pvm.toml"))
    return html_report.render(_results(), FP, title="kvmtest: lab7", issues=issues, date="2026-11-30 16:42:38 UTC")


def _cell(page: str, mode: str) -> str:
    header = re.search(r"<table id='matrix'><tr>(.*?)</tr>", page).group(1)
    column = re.findall(r"<th>(.*?)</th>", header).index(mode)
    row = re.search(r"<tr><th>modes</th>(.*?)</tr>", page).group(1)
    return re.findall(r"<td[^>]*>.*?</td>|<td></td>", row)[column - 1]


def test_xpassed_and_xfailed_have_distinct_marks_and_a_legend(page):
    xf, xp = _cell(page, "pm32"), _cell(page, "pm16")
    assert "XF" in xf and "XP" not in xf and "XP" in xp and "XF" not in xp, (xf, xp)
    colour = lambda cell: re.search(r"background:(#\w+)", cell).group(1)  # noqa: E731
    assert colour(xf) != colour(xp)
    legend = page.split("class='legend'", 1)[1].split("</div>", 1)[0]
    assert "XP</span> xpassed" in legend and "XF</span> xfailed" in legend


def test_known_issue_ids_link_to_their_evidence(page):
    assert "id='ki-pvm-demo-iret'" in page
    assert "href='#ki-pvm-demo-iret'" in page, "the XPASS card must link its entry"
    entry = page.split("id='ki-pvm-demo-iret'", 1)[1].split("</tr>", 1)[0]
    for text in ("SDM Vol. 2A IRET", "KVM_EXIT_INTERNAL_ERROR suberror 1", "the same guest at CPL3", "kvm_pvm.toml:1",
                 "IRET in 32-bit protected mode ends KVM_RUN"):
        assert text in entry
    assert "known issues: pvm-demo-iret (1)" in _cell(page, "pm32")


def test_run_date_and_grouped_skip_reasons(page):
    assert "run 2026-11-30 16:42:38 UTC" in page
    skips = page.split("id='skip-reasons'", 1)[1].split("</table>", 1)[0]
    assert "<td>2</td><td>KVM does not report CPU feature smap (2)</td>" in skips


def test_failures_come_first_with_their_diagnostics(page):
    failures, matrix = page.index("id='failures'"), page.index("<table id='matrix'>")
    assert failures < matrix
    card = page[failures:matrix]
    assert "expected #PF(0x3), observed no fault" in card
    for text in ("rip=0x8004", "kvm: vcpu0 unhandled rdmsr: 0x123", "KVM_EXIT_HLT", "test_p.py:12: AssertionError"):
        assert text in card
    assert card.index("guest test_walk") < card.index("kernel log") < card.index("ioctl trace"), \
        "guest state and the kernel log come before the trace"


def test_fingerprint_is_folded_and_nothing_is_loaded(page):
    assert re.search(r"<details><summary>[^<]*</summary><table id='fingerprint'>", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"""(src|href)\s*=\s*(?!['"]?#)""", page), "only in-page links"


def test_same_ids_get_same_marks_with_the_real_plugin(pytester, tmp_path):
    """A run through the plugin: XFAIL and XPASS cells differ, the date and skip reason are there."""
    pytester.makepyfile(test_demo="""
        import pytest
        @pytest.mark.xfail(reason="known", strict=False)
        def test_xf():
            assert False
        @pytest.mark.xfail(reason="known", strict=False)
        def test_xp():
            pass
        def test_skip():
            pytest.skip("needs CPU feature CPUID.0x7.0:EBX[20] (smap), which KVM_GET_SUPPORTED_CPUID does not report")
    """)
    out = tmp_path / "r.html"
    pytester.runpytest(f"--kvm-html={out}", "-p", "no:cacheprovider")
    page = out.read_text()
    assert "1&nbsp;XF" in page and "1&nbsp;XP" in page
    assert re.search(r"run \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", page)
    assert "KVM does not report CPU feature smap (1)" in page


LAYOUT_PROBE = """<script>
const fp = document.getElementById('fingerprint');
document.body.setAttribute('data-layout', JSON.stringify({
  fingerprint_rendered: fp.checkVisibility(),
  failures_top: document.getElementById('failures').getBoundingClientRect().top,
  legend_top: document.querySelector('.legend').getBoundingClientRect().top,
  window_height: window.innerHeight}));
</script></body>"""


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_first_screen_in_headless_chromium(page, tmp_path):
    """In a real browser: the legend and the failures are on the first screen, the fingerprint is
    folded away (a copy of the page gets a probe script; the report itself has none)."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", LAYOUT_PROBE))
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]
    dom = subprocess.run(base + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-layout="([^"]*)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    layout = json.loads(found.group(1).replace("&quot;", '"'))
    assert not layout["fingerprint_rendered"], layout
    assert layout["legend_top"] < layout["failures_top"] < layout["window_height"], layout
    shot = tmp_path / "report.png"
    report = tmp_path / "report.html"
    report.write_text(page)
    subprocess.run(base + [f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, "the screenshot is missing or blank"
