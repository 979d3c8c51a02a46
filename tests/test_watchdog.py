"""The KVM_RUN watchdog (kvmtest.vcpu_watchdog) against stand-in vCPUs, no KVM needed: it kicks a
run only once more than its timeout has passed since the run began, and never one that ended."""

import threading
import time

from kvmtest.vcpu_watchdog import watchdog


class FakeVcpu:
    """The attributes Vcpu.run() sets for the watchdog, and an _expire that records its kicks
    with the run number they name (Vcpu._expire kicks only if that run is still in flight)."""

    def __init__(self, timeout: float):
        self.exits, self._run_thread, self._run_timeout = 0, None, timeout
        self._timed_out, self._watch_seen = False, None
        self._kvm_run: object | None = object()  # Vcpu's mapping: None once closed
        self.kicks: list[tuple[int, float]] = []

    def start_run(self) -> float:
        # In run()'s order: the timeout (kept here) before the run number, then the thread.
        self.exits += 1
        self._timed_out = False
        self._run_thread = threading.get_ident()
        return time.monotonic()

    def end_run(self):
        self._run_thread = None

    def _expire(self, generation: int, thread_id: int):
        if generation == self.exits and self._run_thread is not None:
            self.kicks.append((generation, time.monotonic()))
            self._timed_out = True


def test_a_run_past_its_timeout_is_kicked_after_the_timeout_not_before():
    vcpu = FakeVcpu(timeout=0.2)
    watchdog.watch(vcpu)  # the process's own watchdog: it holds the stand-in weakly, as it does a Vcpu
    started = vcpu.start_run()
    deadline = started + 5
    while not vcpu.kicks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert vcpu.kicks, "a run in flight 5 s past its 0.2 s timeout was never kicked"
    (generation, at), = vcpu.kicks
    assert generation == 1
    assert at - started >= 0.2, f"kicked {at - started:.3f} s after the run began, before its 0.2 s timeout"


def test_runs_that_each_end_within_the_timeout_are_never_kicked():
    """An exit loop: each run lasts less than the timeout, though one is in flight at almost every
    tick; none may be kicked (each is a new run number)."""
    vcpu = FakeVcpu(timeout=0.15)
    watchdog.watch(vcpu)  # the process's own watchdog: it holds the stand-in weakly, as it does a Vcpu
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        vcpu.start_run()
        time.sleep(0.05)
        vcpu.end_run()
    assert vcpu.kicks == [], f"runs of 0.05 s with a 0.15 s timeout were kicked: {vcpu.kicks}"


def test_an_idle_vcpu_is_never_kicked():
    vcpu = FakeVcpu(timeout=0.05)
    watchdog.watch(vcpu)  # the process's own watchdog: it holds the stand-in weakly, as it does a Vcpu
    vcpu.start_run()
    vcpu.end_run()
    time.sleep(0.5)
    assert vcpu.kicks == []


def test_a_closed_vcpu_is_no_longer_watched_though_still_alive():
    vcpu = FakeVcpu(timeout=0.2)
    watchdog.watch(vcpu)
    assert vcpu in watchdog.watched()
    vcpu._kvm_run = None  # what Vcpu.close() leaves
    assert vcpu not in watchdog.watched()
    assert all(ref() is not vcpu for ref in watchdog.running)


def test_importing_kvmtest_installs_no_signal_handler():
    """The plugin stays dormant in other projects' sessions: importing it (and the library) leaves SIG_KICK's
    disposition alone; the handler comes with the first Kvm() (kvmtest.kvm), which this test does not make."""
    import subprocess
    import sys

    code = ("import signal, kvmtest.plugin, kvmtest.vcpu, kvmtest.guest\n"
            "from kvmtest.vcpu_watchdog import SIG_KICK\n"
            "print(signal.getsignal(SIG_KICK) == signal.SIG_DFL)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True", out
