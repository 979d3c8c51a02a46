"""What a user at a terminal reads: one line per test under xdist, failure reasons that survive a
long test id, skips and xfails grouped with counts (kvmtest.reports.terminal)."""

from kvmtest.reports.skips import group_skips, missing_feature

LONG_ID = "test_" + "a_check_whose_name_is_as_long_as_the_ones_in_the_suites" + "[long64-cpl3-4k-leaf-ro-write-wp1]"
REASON = "expected #DB (vector 1) after the OUT at RIP 0x8004, observed #GP(0) (vector 13) at RIP 0x8006"

DEMO = f"""
import pytest

@pytest.mark.parametrize("case", ["long64-cpl3-4k-leaf-ro-write-wp1"])
def {LONG_ID.split("[")[0]}(case):
    assert False, {REASON!r}

@pytest.mark.parametrize("mode", ["real", "pm32", "long64"])
def test_smap(mode):
    pytest.skip("CR4.SMAP needs the smap CPUID bit, which KVM does not report")

@pytest.mark.parametrize("mode", ["real", "pm32"])
def test_smep(mode):
    pytest.skip(f"needs CPU feature CPUID.0x7.0:EBX[7] (smep), which KVM_GET_SUPPORTED_CPUID does not report")

def test_cap():
    pytest.skip("needs KVM_CAP_X86_SMM >= 1; KVM_CHECK_EXTENSION reports 0")

@pytest.mark.parametrize("mode", ["pm16", "pm32"])
@pytest.mark.xfail(reason="known issue pvm-demo: IRET fails [kvm_pvm.toml:1]", strict=True)
def test_iret(mode):
    assert False

def test_pass():
    pass
"""


def _summary(result) -> list[str]:
    lines = result.stdout.lines
    start = max(i for i, line in enumerate(lines) if "short test summary info" in line)
    return lines[start + 1:]


def test_failure_reason_is_kept_whole_below_a_long_id(pytester):
    """pytest's `FAILED id - reason` is cut at the terminal width: with kvmtest's ids the reason
    was cut away. The reason gets its own line, whole."""
    pytester.makepyfile(test_demo=DEMO)
    result = pytester.runpytest("-ra", "-p", "no:cacheprovider")
    summary = _summary(result)
    failed = next(i for i, line in enumerate(summary) if line.startswith("FAILED "))
    assert summary[failed] == f"FAILED test_demo.py::{LONG_ID}"
    assert summary[failed + 1].strip() == f"AssertionError: {REASON}", summary


def test_skips_are_grouped_with_counts(pytester):
    """Every missing-CPU-feature skip in one line naming each feature with its count; any other
    reason on a line of its own with its count; xfails grouped by reason."""
    pytester.makepyfile(test_demo=DEMO)
    result = pytester.runpytest("-ra", "-p", "no:cacheprovider")
    summary = _summary(result)
    assert "SKIPPED [5] KVM does not report CPU feature smap (3), smep (2)" in summary, summary
    assert "SKIPPED [1] needs KVM_CAP_X86_SMM >= 1; KVM_CHECK_EXTENSION reports 0" in summary
    assert "XFAIL [2] known issue pvm-demo: IRET fails [kvm_pvm.toml:1]" in summary
    assert len([line for line in summary if line.startswith("SKIPPED")]) == 2


def test_summary_follows_the_r_chars(pytester):
    """`-rf` shows failures only; pytest's own default (no -r) still names failures."""
    pytester.makepyfile(test_demo=DEMO)
    summary = _summary(pytester.runpytest("-rf", "-p", "no:cacheprovider"))
    assert [line.split()[0] for line in summary if line[:1].isupper()][:1] == ["FAILED"]
    assert not any(line.startswith(("SKIPPED", "XFAIL")) for line in summary)


def test_one_line_per_test_under_xdist(pytester):
    """Under xdist with -v, pytest wrote each id twice (at start and with the result)."""
    pytester.makepyfile(test_demo="""
        import pytest
        @pytest.mark.parametrize("n", range(6))
        def test_n(n):
            pass
    """)
    result = pytester.runpytest("-v", "-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    for n in range(6):
        lines = [line for line in result.stdout.lines if f"test_n[{n}]" in line]
        assert len(lines) == 1 and "PASSED" in lines[0], lines


def test_feature_skip_forms_are_recognised():
    assert missing_feature("Skipped: 1 GiB pages need CPUID.80000001H:EDX[26] (pdpe1gb), which KVM does not report") \
        == "pdpe1gb"
    assert missing_feature("needs CPUID.0x80000001.0:EDX[27] (rdtscp), which neither KVM_GET_SUPPORTED_CPUID nor "
                           "KVM_GET_EMULATED_CPUID reports") == "rdtscp"
    assert missing_feature("mode long64-la57 needs CPU feature CPUID.0x7.0:ECX[16] (la57), which "
                           "KVM_GET_SUPPORTED_CPUID does not report") == "la57"
    assert missing_feature("no /dev/kvm (is KVM loaded?)") is None
    assert missing_feature("the report (smap), which was not about KVM") is None
    assert group_skips(["no /dev/kvm (is KVM loaded?)"] * 2) == [(2, "no /dev/kvm (is KVM loaded?)")]
