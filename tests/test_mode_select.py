"""Modes chosen by property (kvmtest.guest.mode_select) and the markers that use them
(kvmtest.markers): what a selection holds is checked against the CpuMode fields themselves or
against lists written out by hand, never against select()'s own output."""

import inspect

import pytest

from kvmtest.errors import BadArgumentError, UnknownModeError
from kvmtest.guest import mode_select
from kvmtest.guest.mode_select import ANY, SAMPLES, marker_modes, select
from kvmtest.guest.modes import ALL_MODES, MODES, CpuMode


def test_properties_select_exactly_the_modes_that_have_them():
    start = [MODES[n] for n in ALL_MODES]
    assert select(code_bits=64) == ("long64", "long64-cpl3")  # 64-bit code: IA-32e mode, CS.L = 1
    assert select(long=True, cpl=3) == ("long64-cpl3", "compat32-cpl3")
    assert select(paging="pae") == ("pae", "pae-cpl3")
    assert select(protected=False) == ("real",)  # reset is a start state, not a start mode
    assert set(select(paging=True)) == {m.name for m in start if m.paging and not m.requires}
    assert set(select(cpl=3)) == {m.name for m in start if m.cpl == 3}
    assert select(feature="la57") == ("long64-la57",)
    assert select(feature=ANY) == tuple(ALL_MODES)
    assert select(paging=(False, "4level"), cpl=0) == ("real", "pm16", "pm32", "long64", "compat32")


def test_samples_pick_one_mode_per_class_the_first_in_library_order():
    per_code = SAMPLES["per-code-size"].modes()
    assert [m.name for m in per_code if m.cpl == 0] == ["real", "pm32", "long64", "compat32"]
    keys = [(m.code_bits, m.long, m.cpl) for m in per_code]
    assert len(keys) == len(set(keys)), "a class picked twice"
    start = [MODES[n] for n in ALL_MODES]
    assert set(keys) == {(m.code_bits, m.long, m.cpl) for m in start}, "a class left out"
    per_paging = select(sample="per-paging-form", feature=ANY)
    assert {(MODES[n].paging, MODES[n].cpl) for n in per_paging} == {(m.paging, m.cpl) for m in start if m.paging}
    assert all(s.reason for s in SAMPLES.values())


def test_widest_order_puts_64_bit_code_and_deeper_paging_first():
    assert select(sample="per-paging-form", order="widest") == (
        "long64", "long64-cpl3", "pae", "pae-cpl3", "paging32", "paging32-cpl3")
    assert select(sample="per-code-size", protected=True, cpl=0, order="widest") == ("long64", "compat32", "pm32")


def test_a_new_mode_joins_every_selection_it_matches(monkeypatch):
    """Adding a mode to the library is all it takes: no suite names it."""
    new = CpuMode("long64-la57-cpl3", 64, 64, "5level", cpl=3, long=True, requires="la57")
    monkeypatch.setattr(mode_select, "MODES", {**MODES, new.name: new})
    monkeypatch.setattr(mode_select, "ALL_MODES", [*ALL_MODES, new.name])
    assert select(cpl=3, feature="la57") == ("long64-la57-cpl3",)
    assert "long64-la57-cpl3" in select(code_bits=64, feature=ANY)
    assert "long64-la57-cpl3" in select(sample="per-paging-form", feature=ANY)
    assert "long64-la57-cpl3" not in select(code_bits=64)  # needs a feature: only when asked


@pytest.mark.parametrize("kwargs,message", [
    ({"paging": "4-level"}, "paging='4-level' is not one of"),
    ({"cpl": 1}, "cpl=1 is not one of"),
    ({"cpl": True}, "cpl=True is not one of"),
    ({"code_bits": ()}, "code_bits=() selects nothing"),
    ({"feature": "warp"}, "feature='warp' is not one of"),
    ({"sample": "favourites"}, "no sample 'favourites'"),
    ({"order": "random"}, "order='random' is not one of"),
    ({"code_bits": 16, "paging": True}, "no start mode has paging=True, code_bits=16"),
])
def test_a_bad_selection_is_one_clear_error(kwargs, message):
    with pytest.raises(BadArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select(**kwargs)


def test_the_marker_takes_names_then_properties():
    assert marker_modes((), {}) == ALL_MODES
    assert marker_modes(("cpl0",), {}) == [n for n in ALL_MODES if not MODES[n].user]
    assert marker_modes(("real",), {"code_bits": 64}) == ["real", "long64", "long64-cpl3"]
    with pytest.raises(UnknownModeError, match="long128"):
        marker_modes(("long128",), {})
    with pytest.raises(BadArgumentError, match="long64 selected more than once"):
        marker_modes(("long64",), {"code_bits": 64})
    with pytest.raises(BadArgumentError, match="unknown keyword.*bits"):
        marker_modes((), {"bits": 64})
    assert set(mode_select.KEYWORDS) == set(inspect.signature(select).parameters)
    with pytest.raises(BadArgumentError, match="not a mode name"):
        marker_modes((("real", "pm32"),), {})


def test_marker_properties_parametrize_the_test(pytester):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.modes(long=True, order="widest")
        def test_m(mode):
            pass
    """)
    result = pytester.runpytest("-v", "--strict-markers", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*test_m[[]long64[]] PASSED*", "*test_m[[]long64-cpl3[]] PASSED*",
                                 "*test_m[[]compat32[]] PASSED*", "*test_m[[]compat32-cpl3[]] PASSED*"])


def test_a_bad_marker_fails_collection_naming_the_test(pytester):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.modes(paging="4-level")
        def test_m(mode):
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*@pytest.mark.modes on *test_m*paging='4-level' is not one of*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED


@pytest.mark.parametrize("marker,message", [
    ('regression("CVE-2021-38198")', "takes cve='CVE-YYYY-NNNN' and/or commit="),
    ('regression(cve_id="CVE-2021-38198")', "takes cve="),
    ('regression(cve="2021-38198")', "cve='2021-38198' is not a CVE id"),
    ('regression(commit="fix in 5.12")', "commit='fix in 5.12' is not a git commit id"),
])
def test_a_bad_regression_marker_fails_collection(pytester, marker, message):
    pytester.makepyfile(f"""
        import pytest
        @pytest.mark.{marker}
        def test_r():
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"*@pytest.mark.regression on *test_r*{message}*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED


@pytest.mark.parametrize("marker", ["waits(0.5)", "waits(reason='timers')"])
def test_a_waits_marker_with_arguments_fails_collection(pytester, marker):
    """`waits` takes nothing: a duration or reason given would look meaningful and mean nothing."""
    pytester.makepyfile(f"""
        import pytest
        @pytest.mark.{marker}
        def test_w():
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*@pytest.mark.waits on *test_w*: takes no arguments*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED


@pytest.mark.parametrize("marker, message", [
    ('waits("slow")', "@pytest.mark.waits on *test_p[[]2[]]: takes no arguments*"),
    ('regression(cve="bad")', "@pytest.mark.regression on *test_p[[]2[]]: cve='bad' is not a CVE id*"),
])
def test_a_bad_marker_on_one_parameter_is_a_usage_error_naming_the_test(pytester, marker, message):
    """A mark given to one parameter (pytest.param(..., marks=...)) is checked too: one usage error
    naming the test, not an INTERNALERROR traceback, and not accepted silently."""
    pytester.makepyfile(f"""
        import pytest
        @pytest.mark.parametrize("x", [1, pytest.param(2, marks=pytest.mark.{marker})])
        def test_p(x):
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_regression_shows_in_ktap_and_html_when_it_fails(pytester, tmp_path):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.regression(cve="CVE-2021-38198", commit="b1bd5cba3306691c771d558e94baa73e8b0b96b7")
        def test_r():
            assert 1 == 2, "no #PF from the read-only alias"
    """)
    ktap, html = tmp_path / "r.ktap", tmp_path / "r.html"
    pytester.runpytest(f"--kvm-ktap={ktap}", f"--kvm-html={html}", "-p", "no:cacheprovider")
    lines = ktap.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("not ok") and "test_r" in line)
    assert lines[at - 2].strip() == "# regression: CVE-2021-38198, fixed by b1bd5cba3306", lines[at - 3:at + 1]
    assert "no #PF from the read-only alias" in lines[at - 1], "the reason must stay the line before `not ok`"
    assert "regression CVE-2021-38198, fixed by b1bd5cba3306" in html.read_text()


def test_mmu_dependent_tests_carry_the_mmu_mode(pytester, tmp_path):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.mmu_dependent
        def test_walk():
            pass
        def test_other():
            pass
    """)
    junit = tmp_path / "r.xml"
    pytester.runpytest(f"--kvm-junit={junit}", "-p", "no:cacheprovider", "--strict-markers")
    xml = junit.read_text()
    walk, other = xml.split('name="test_walk"')[1].split("</testcase>")[0], xml.split('name="test_other"')[1]
    assert "mmu_mode: " in walk and "mmu_mode" not in other.split("</testcase>")[0]


def test_a_test_taking_mode_without_the_marker_is_told_what_is_missing(pytester):
    pytester.makepyfile("""
        import pytest
        def test_m(mode):
            pass
        @pytest.mark.parametrize("mode", ["real"])
        def test_own(mode):
            assert mode == "real"
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*test_m takes `mode` but has no @pytest.mark.modes(...)*"])
    result.assert_outcomes(passed=1, errors=1)
