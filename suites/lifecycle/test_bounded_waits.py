"""Every wait kvmtest makes ends: KVM_RUN's EINTR is an answer, not a reason to retry, and
every timeout is a finite number of seconds, refused by name otherwise.

api.rst 5, "immediate_exit": KVM_RUN with it set returns -EINTR at once, every time, so a
loop that retries EINTR never ends. A NaN or infinite deadline never passes, so the watchdog
would never kick a stuck guest. Checks a broken kvmtest would hang run in a fresh interpreter.
"""

import math

import pytest

from kvmtest.errors import InvalidTimeoutError
from kvmtest.guest.runloop import VcpuThread

BAD_TIMEOUTS = [math.nan, math.inf, -math.inf, 0, 0.0, -1, True, False, "5", 10**400, 1e300]
HUGE = 86400.0  # the longest timeout allowed (validate.MAX_TIMEOUT): must not overflow a deadline or a join


def test_try_run_with_immediate_exit_returns_eintr_at_once(isolated):
    """try_run() with kvm_run.immediate_exit set returns EINTR (api.rst 5) instead of retrying
    it, and leaves immediate_exit as the caller set it."""
    out = isolated("""
        g = Guest(kvm, "long64", "spin: jmp spin")
        g.vcpu.kvm_run.immediate_exit = 1
        start = time.monotonic()
        err = g.vcpu.try_run()
        print("ERR", errno.errorcode.get(err, err), round(time.monotonic() - start, 3), g.vcpu.kvm_run.immediate_exit)
    """, timeout=30)
    name, took, flag = out.split("ERR ", 1)[1].split()
    assert name == "EINTR", f"try_run with immediate_exit: expected EINTR, got {name}"
    assert float(took) < 2 and flag == "1", out


def test_try_run_of_a_spinning_guest_times_out(isolated):
    """try_run() is bounded by the watchdog like run(): a guest that never exits raises
    GuestTimeout naming the mode and RIP after the timeout."""
    out = isolated("""
        g = Guest(kvm, "long64", "spin: jmp spin")
        start = time.monotonic()
        try:
            g.vcpu.try_run(timeout=0.3)
        except GuestTimeout as e:
            print("TIMEOUT", round(time.monotonic() - start, 1), e)
        print("IMMEDIATE_EXIT", g.vcpu.kvm_run.immediate_exit)
    """, timeout=30)
    assert "guest still running after 0.3s in long64 at RIP 0x8000" in out, out
    assert float(out.split("TIMEOUT ", 1)[1].split()[0]) < 5
    assert "IMMEDIATE_EXIT 0" in out, "the watchdog's kick was left in kvm_run.immediate_exit"


def test_a_guest_first_built_on_a_worker_thread_is_still_bounded(isolated):
    """The watchdog ends a KVM_RUN with a signal (api.rst 4.10: EINTR while "an unmasked signal is
    pending"), whose handler only the main thread can install: a process whose first vCPU is made
    and run on another thread still gets GuestTimeout for a guest that never exits, not a hang."""
    out = isolated("""
        got = []
        def body():
            g = Guest(kvm, "long64", "spin: jmp spin", timeout=0.3)
            try:
                g.run()
            except GuestTimeout as e:
                got.append(f"TIMEOUT {e}")
            finally:
                g.close()
        t = threading.Thread(target=body)
        t.start()
        t.join(20)
        print(got, "ALIVE" if t.is_alive() else "ENDED")
    """, timeout=30)
    assert "TIMEOUT" in out and "guest still running after 0.3s in long64" in out and "ENDED" in out, out


def test_a_vcpu_that_could_not_be_kicked_is_refused(isolated):
    """Where the watchdog's signal handler is missing (KVM first opened off the main thread, simulated
    here by taking it away), making a vCPU on another thread is one KvmtestError saying why, not a vCPU
    whose KVM_RUN could run forever."""
    out = isolated("""
        import signal
        import kvmtest.vcpu_watchdog as w
        signal.signal(w.SIG_KICK, signal.SIG_DFL)
        w._kick_installed = False
        got = []
        def body():
            try:
                Guest(kvm, "long64", "spin: jmp spin", timeout=0.3)
            except Exception as e:
                got.append(f"{type(e).__name__}: {e}")
        t = threading.Thread(target=body)
        t.start()
        t.join(20)
        print(got)
    """, timeout=30)
    assert "KvmtestError" in out and "can only be installed on the main thread" in out, out


@pytest.mark.parametrize("bad", BAD_TIMEOUTS, ids=repr)
def test_bad_timeouts_are_refused_where_they_are_given(guest, bad):
    """A timeout that is not a finite number of seconds above 0 is one InvalidTimeoutError naming
    the value and where it was given: Vcpu.run, Vcpu.try_run, Vcpu.timeout, Guest(timeout=),
    Guest.in_thread and VcpuThread.join. The guest would exit at once, so accepting the value
    shows as a missing error, not a hang."""
    g = guest("long64", "GUEST_DONE")
    shown = repr(bad) if not isinstance(bad, int) or isinstance(bad, bool) or bad < 10**20 else None
    checks = {
        f"{g.vcpu.name} run() timeout": lambda: g.vcpu.run(timeout=bad),
        f"{g.vcpu.name} try_run() timeout": lambda: g.vcpu.try_run(timeout=bad),
        f"timeout of {g.vcpu.name}": lambda: setattr(g.vcpu, "timeout", bad),
        "Guest 'late' timeout": lambda: guest("long64", "GUEST_DONE", timeout=bad, name="late"),
        f"Guest {g.name!r} in_thread timeout": lambda: g.in_thread(timeout=bad),
        "VcpuThread.join timeout": lambda: VcpuThread(lambda: None).join(bad),
    }
    for where, action in checks.items():
        with pytest.raises(InvalidTimeoutError) as info:
            action()
        assert str(info.value).startswith(f"{where} = "), f"{where}: {info.value}"
        if shown:
            assert shown in str(info.value), f"{where}: the value is not named: {info.value}"
    assert g.vcpu.timeout > 0 and math.isfinite(g.vcpu.timeout)
    assert g.run_to_done() == []


def test_a_huge_finite_timeout_is_accepted(guest):
    """The longest timeout allowed (a day) is a valid deadline: the guest runs, and a thread
    joined with it returns."""
    g = guest("long64", "GUEST_SYNC 7\nGUEST_DONE", timeout=HUGE)
    assert g.vcpu.timeout == HUGE
    assert g.expect_sync(timeout=HUGE) == 7
    assert g.in_thread(timeout=HUGE).join(HUGE) == []



def test_a_guest_that_syncs_forever_fails_instead_of_running_forever(isolated):
    """run_to_done() stops after max_exits GUEST_SYNC events without GUEST_DONE: each KVM_RUN
    ends quickly, so only a bound on the events keeps a syncing loop from running forever."""
    out = isolated("""
        from kvmtest.errors import GuestFailure
        g = Guest(kvm, "long64", "again:\\nGUEST_SYNC 7\\njmp again", max_exits=50)
        try:
            g.run_to_done()
        except GuestFailure as e:
            print("FAILED", str(e).splitlines()[0])
    """, timeout=60)
    want = "FAILED guest (long64): more than 50 GUEST_SYNC events without GUEST_DONE (last values [7, 7, 7])"
    assert want in out, out
