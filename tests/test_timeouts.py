"""Every timeout input is a finite number of seconds above 0, refused by name otherwise.

A NaN or infinite deadline never passes, so a stuck guest would never be kicked and the run
would hang; 0 or a negative one fails every guest at once; True is not "1 second". Up to a day
is a valid, long deadline; more is refused, since a stuck guest would hang the run as surely as
with none (a tester's 1e300 did). (No KVM needed.)
"""

import math

import pytest

from kvmtest.errors import InvalidTimeoutError
from kvmtest.validate import timeout

BAD = [(math.nan, "not a number of seconds (NaN)"), (math.inf, "not a finite number of seconds"),
       (-math.inf, "not a finite number of seconds"), (0, "must be more than 0 seconds"),
       (-0.5, "must be more than 0 seconds"), (True, "not a number of seconds"),
       ("5", "not a number of seconds"), (None, "not a number of seconds"), (b"1", "not a number of seconds"),
       (10**400, "not a finite number of seconds (too large for a float)")]


@pytest.mark.parametrize("value, problem", BAD, ids=[repr(v)[:12] for v, _ in BAD])
def test_bad_timeout_names_value_and_place(value, problem):
    with pytest.raises(InvalidTimeoutError) as info:
        timeout(value, "vm0/vcpu0 run() timeout")
    assert str(info.value) == f"vm0/vcpu0 run() timeout = {value!r}: {problem}"


@pytest.mark.parametrize("value", [1e-3, 1, 10.0, 86400])
def test_finite_positive_timeouts_are_seconds(value):
    assert timeout(value, "x") == float(value)


@pytest.mark.parametrize("value", [86400.5, 1e300, 2**100])
def test_timeouts_longer_than_a_day_are_refused(value):
    with pytest.raises(InvalidTimeoutError, match="is no timeout: a stuck guest would hang the run"):
        timeout(value, "x")


@pytest.fixture
def run(pytester, monkeypatch):
    for var in ("KVMTEST_GUEST_TIMEOUT", "KVMTEST_DEVICE", "KVMTEST_KNOWN_ISSUES", "KVMTEST_MODES"):
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(test_show="""
        def test_show(pytestconfig):
            from kvmtest.plugin import settings
            print("TIMEOUT", settings(pytestconfig)["kvm_guest_timeout"])
    """)
    return pytester


@pytest.mark.parametrize("text, problem", [
    ("nan", "not a number of seconds (NaN)"), ("inf", "not a finite number of seconds"),
    ("-inf", "not a finite number of seconds"), ("1e999", "not a finite number of seconds"),
    ("0", "must be more than 0 seconds"), ("-3", "must be more than 0 seconds"), ("ten", "not a number of seconds"),
])
def test_option_from_the_command_line(run, text, problem):
    result = run.runpytest(f"--kvm-guest-timeout={text}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--kvm-guest-timeout='{text}' (from command line): {problem}*"])


def test_option_from_the_environment_and_the_ini_file(run, monkeypatch):
    run.makeini("[pytest]\nkvm_guest_timeout = inf\n")
    result = run.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kvm-guest-timeout='inf' (from ini kvm_guest_timeout): not a finite number*"])
    monkeypatch.setenv("KVMTEST_GUEST_TIMEOUT", "NaN")
    result = run.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kvm-guest-timeout='NaN' (from environment KVMTEST_GUEST_TIMEOUT): "
                                 "not a number of seconds (NaN)*"])


def test_a_day_is_the_longest_option_accepted(run):
    assert "TIMEOUT 86400" in run.runpytest("-s", "--kvm-guest-timeout=86400").stdout.str()
    result = run.runpytest("-s", "--kvm-guest-timeout=1e300")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--kvm-guest-timeout='1e300' (from command line): more than 86400 seconds*"])


@pytest.mark.parametrize("args, message", [
    ("float('nan')", " = nan: not a number of seconds (NaN)"),
    ("float('inf')", " = inf: not a finite number of seconds"),
    ("True", " = True: not a number of seconds"),
    ("'5'", " = '5': not a number of seconds"),
    ("0", " = 0: must be more than 0 seconds"),
    ("", ": takes one number of seconds, got args=()"),
])
def test_guest_timeout_marker(run, args, message):
    run.makepyfile(test_marker=f"""
        import pytest
        @pytest.mark.guest_timeout({args})
        def test_m(guest_timeout):
            print("GOT", guest_timeout)
    """)
    result = run.runpytest("-p", "no:cacheprovider", "test_marker.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*InvalidTimeoutError: @pytest.mark.guest_timeout on test_marker.py::test_m{message}*"])


def test_a_day_is_the_longest_marker_accepted(run):
    run.makepyfile(test_marker="""
        import pytest
        @pytest.mark.guest_timeout(86400)
        def test_m(guest_timeout):
            assert guest_timeout == 86400

        @pytest.mark.guest_timeout(1e300)
        def test_n(guest_timeout):
            pass
    """)
    run.runpytest("-p", "no:cacheprovider", "test_marker.py").assert_outcomes(passed=1, errors=1)


def test_guests_get_the_marker_timeout_else_the_option(run):
    """The guest fixture hands every guest the test's timeout (the guest_timeout fixture's value)
    without setting that fixture up. (A stand-in Guest: no KVM needed.)"""
    run.makeconftest("""
        import pytest
        import kvmtest.fixtures

        class Recorded:
            def __init__(self, kvm, mode, source, **kw):
                self.kw = kw

            def close(self):
                pass

        @pytest.fixture
        def kvm():
            return object()

        @pytest.fixture(autouse=True)
        def recorded_guests(monkeypatch):
            monkeypatch.setattr(kvmtest.fixtures, "Guest", Recorded)
    """)
    run.makepyfile(test_guests="""
        import pytest

        @pytest.mark.guest_timeout(7)
        def test_marked(guest, guest_timeout):
            assert guest("long64", "hlt").kw["timeout"] == guest_timeout == 7

        def test_unmarked(guest, guest_timeout):
            assert guest("long64", "hlt").kw["timeout"] == guest_timeout == 3

        def test_a_guest_may_still_name_its_own(guest):
            assert guest("long64", "hlt", timeout=9).kw["timeout"] == 9

        @pytest.mark.guest_timeout(0)
        def test_a_bad_marker_is_refused_naming_the_test(guest):
            pass
    """)
    result = run.runpytest("--kvm-guest-timeout=3", "test_guests.py")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.guest_timeout on test_guests.py::test_a_bad_marker_is_refused_naming*"
                                 "must be more than 0 seconds*"])
