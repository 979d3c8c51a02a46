"""The KVM_RUN watchdog: one thread per process that kicks vCPUs whose KVM_RUN has outrun its timeout.

A kick sets kvm_run.immediate_exit and sends SIG_KICK to the thread inside KVM_RUN; KVM_RUN then
returns EINTR (api.rst 5, "immediate_exit"; 4.10 KVM_RUN: "an unmasked signal is pending").
Python installs signal handlers without SA_RESTART, so the signal is not swallowed by a restart.
"""

import signal
import threading
import time
import weakref

SIG_KICK = signal.SIGRTMIN + 3
_kick_installed = False


def install_kick_handler() -> bool:
    """Install the no-op SIG_KICK handler; only the main thread can (returns False elsewhere, True
    once installed). Python installs handlers without SA_RESTART, so the signal makes KVM_RUN
    return EINTR instead of being restarted."""
    global _kick_installed
    if _kick_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(SIG_KICK, lambda signum, frame: None)
    _kick_installed = True
    return True


def send_kick(thread_id: int) -> None:
    """SIG_KICK to `thread_id`, if the handler is installed (else the signal would kill the
    process); a thread that has gone is no error."""
    if _kick_installed:
        try:
            signal.pthread_kill(thread_id, SIG_KICK)
        except (ProcessLookupError, OSError):
            pass


class Watchdog:
    """Kicks every watched vCPU whose KVM_RUN has been in flight longer than its timeout, checking
    every `tick` seconds.

    KVM_RUN number N is in flight while Vcpu._run_thread is set and Vcpu.exits is N; its timeout
    is Vcpu._run_timeout. The watchdog notes when it first sees each run in flight (always after
    that run began, so a kick never comes early) and kicks once more than the timeout has passed
    since: at most two ticks late. The run itself reads no clock, so the exit loop stays close
    to C speed. vCPUs are held weakly: a forgotten vCPU is not kept alive by it.
    """

    tick = 0.02

    def __init__(self):
        # Plain weak references, dropped by the loop once dead: a WeakSet's per-vCPU callback
        # and its removal bookkeeping cost every VM lifecycle several microseconds.
        self.running: list[weakref.ref] = []
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def watch(self, vcpu) -> None:
        """Check `vcpu` from now on (starting the thread on first use)."""
        with self.lock:
            self.running.append(weakref.ref(vcpu))
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="kvmtest-watchdog", daemon=True)
                self.thread.start()

    def watched(self) -> list:
        """The vCPUs watched now (alive and open), dropping the references of those that are gone or
        closed (Vcpu._kvm_run None: it never runs again). A closed vCPU can stay alive long after its
        test (a report's traceback, a trace entry holds it); kept here, each one cost every tick."""
        with self.lock:
            self.running = live = [ref for ref in self.running
                                   if (vcpu := ref()) is not None and vcpu._kvm_run is not None]
        return [vcpu for vcpu in (ref() for ref in live) if vcpu is not None]  # one may go meanwhile

    def _loop(self):
        monotonic = time.monotonic
        while True:
            time.sleep(self.tick)
            vcpus = self.watched()
            for vcpu in vcpus:
                # The run number first: the timeout read next is that run's or a later one's
                # (Vcpu.run() stores it before it counts the run), and _expire kicks only if that
                # run is still the one in flight.
                generation = vcpu.exits
                tid, timeout = vcpu._run_thread, vcpu._run_timeout
                if tid is None or vcpu._timed_out:
                    continue
                now = monotonic()  # after reading the run number: never before that run began
                seen = vcpu._watch_seen
                if seen is None or seen[0] != generation:
                    vcpu._watch_seen = (generation, now)
                elif now - seen[1] > timeout:
                    vcpu._expire(generation, tid)
            # Hold no vCPU while asleep: these locals kept every vCPU ever watched alive (the next
            # watched() ran while they still did), about 2 kB of RSS per closed guest.
            vcpus.clear()  # a list of our own
            vcpu = None


watchdog = Watchdog()
