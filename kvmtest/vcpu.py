"""A vCPU: its fd, its kvm_run mapping, and KVM_RUN with a timeout (api.rst 4.10, 5).

The ioctls are grouped by area and mixed in: registers and state (kvmtest.vcpu_regs), MSRs and
CPUID (kvmtest.vcpu_cpuid_msr), events, debug and controls (kvmtest.vcpu_events).

KVM_RUN is issued through ctypes (kvmtest.libc), never fcntl.ioctl, so EINTR comes back
to us on every Python version. A stuck guest is kicked by the watchdog (kvmtest.vcpu_watchdog):
it sets kvm_run.immediate_exit and sends SIG_KICK to the thread inside KVM_RUN (api.rst 5,
"immediate_exit"; KVM_RUN returns -EINTR when a signal is pending).
"""

import ctypes
import errno
import threading
import time
from typing import TYPE_CHECKING

from . import ioctl as _ioctl
from . import libc, validate
from .abi import constants as C
from .abi import structs as S
from .abi.constants import errno_name
from .carried import VCPU_STATE_IOCTLS, CarriedIoctls
from .dirty_ring import DirtyRing
from .errors import ClosedError, GuestTimeout, KvmError, KvmtestError, StaleExitError
from .exit_parsers import PARSERS, UNPARSED, parse_exit
from .exits import IntrExit
from .fdobject import FdObject
from .mapped import GuardedView, MappingGuard
from .vcpu_cpuid_msr import VcpuMsrCpuid
from .vcpu_events import VcpuEvents
from .vcpu_regs import VcpuRegisters
from .vcpu_watchdog import install_kick_handler, send_kick, watchdog
from .x86 import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA

if TYPE_CHECKING:
    from .vm import Vm

__all__ = ["DEFAULT_RUN_TIMEOUT", "Vcpu", "describe_mode", "install_kick_handler"]

DEFAULT_RUN_TIMEOUT = 10.0  # seconds for one KVM_RUN; override per call or KVMTEST_GUEST_TIMEOUT
CLOSE_WAIT = 5.0  # seconds close() waits for a KVM_RUN on another thread to return after its kick

# Looked up once: run() is the exit loop's hot path (benchmarks/bench_harness.py).
_get_ident = threading.get_ident
_parser = PARSERS.get
_trace_append = _ioctl.trace_append
_last_errno = _ioctl.last_errno
_EAGAIN, _EINTR = errno.EAGAIN, errno.EINTR


def describe_mode(sregs: S.kvm_sregs) -> str:
    """A short name for the CPU mode sregs describe (real, pm16, pm32, paging32, pae, long64, compat32)."""
    cr0, cr4, efer = sregs.cr0, sregs.cr4, sregs.efer
    cpl = sregs.ss.dpl if cr0 & CR0_PE else 0
    if not cr0 & CR0_PE:
        return "real"
    if efer & EFER_LMA and cr0 & CR0_PG:
        mode = "long64" if sregs.cs.l else "compat32"
    elif cr0 & CR0_PG:
        mode = "pae" if cr4 & CR4_PAE else "paging32"
    else:
        mode = "pm32" if sregs.cs.db else "pm16"
    return f"{mode}-cpl{cpl}" if cpl else mode


class Vcpu(VcpuRegisters, VcpuMsrCpuid, VcpuEvents, CarriedIoctls, FdObject):
    """A KVM vCPU (from Vm.create_vcpu) with its mapped kvm_run structure; closed with its VM.
    Every ioctl method names the api.rst section it follows; run() and try_run() enter the guest."""

    SCOPE = "vcpu"
    STATE_IOCTLS = VCPU_STATE_IOCTLS  # see kvmtest.carried

    def __init__(self, vm: "Vm", fd: int, vcpu_id: int):
        super().__init__(fd, f"{vm.name}/vcpu{vcpu_id}")
        if not install_kick_handler():  # without it the watchdog cannot end a KVM_RUN: refuse, never hang
            self.close()
            raise KvmtestError(f"{self.name}: no KVM_RUN of it could be bounded: the watchdog's SIG_KICK handler "
                               "(kvmtest.vcpu_watchdog) can only be installed on the main thread, and this process "
                               "opened KVM first on another; make the first kvmtest.kvm.Kvm() on the main thread")
        self.vm = vm
        self.id = vcpu_id
        self._mmap_size = vm.kvm.vcpu_mmap_size()
        self.run_addr: int | None = None
        self._kvm_run: S.kvm_run | None = None
        # close() unmaps kvm_run only through this guard and with _run_lock held, which run()
        # holds from KVM_RUN until it has read the exit: nothing reads the mapping after munmap.
        self._guard = MappingGuard(f"{self.name}'s kvm_run")
        self._guard_lock = self._guard.lock
        self._run_lock = threading.Lock()
        self._dirty_ring = None
        self._cpuid_nent = None  # entries last given to KVM_SET_CPUID2, a hint for get_cpuid()
        # Setup with no KVM_GET_* (KVM_SET_GUEST_DEBUG, KVM_ENABLE_CAP), replayed on a copy, and
        # ioctls nothing carries (kvmtest.carried).
        self.setup_calls: list[tuple[str, tuple, dict]] = []
        self.uncarried: list[str] = []
        self._responded = -1  # the KVM_RUN whose exit respond() last answered
        self._exited = -1     # the last KVM_RUN that returned an exit (not EINTR or an error)
        try:
            self.run_addr = libc.mmap(self._mmap_size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd)
        except OSError:
            self.close()
            raise
        self._kvm_run = S.kvm_run.from_address(self.run_addr)
        self._enter_kvm_run = _ioctl.kvm_run_entry(fd)  # KVM_RUN on this fd; used only while _kvm_run is set
        self._timeout = DEFAULT_RUN_TIMEOUT
        # The KVM_RUN in flight, for the watchdog (kvmtest.vcpu_watchdog): the thread inside it
        # (None: none in flight) and its timeout; _watch_seen is the watchdog's own note of when
        # it first saw that run.
        self._run_thread: int | None = None
        self._run_timeout = DEFAULT_RUN_TIMEOUT
        self._watch_seen: tuple[int, float] | None = None
        self._timed_out = False
        self.exits = 0  # KVM_RUN calls so far; an exit remembers which one it came from
        self._view = memoryview((ctypes.c_char * self._mmap_size).from_address(self.run_addr)).cast("B")
        if vm.dirty_ring_size:
            try:
                self._dirty_ring = DirtyRing(self, vm.dirty_ring_size)
            except OSError:
                self.close()
                raise
        watchdog.watch(self)

    def has_capability(self, cap: str) -> int:
        """The VM's KVM_CHECK_EXTENSION(cap): what MissingCapabilityError is decided on (kvmtest.ioctl)."""
        return self.vm.check_extension(cap)

    def _release(self) -> None:
        if getattr(self, "_run_lock", None) is None:
            return  # __init__ failed before anything was mapped
        # A KVM_RUN on another thread reads kvm_run when it returns: kick it out and wait for
        # it, so that it finishes with the mapping before the munmap.
        idle = self._run_lock.acquire(blocking=False)
        if not idle:
            self.kick()
            idle = self._run_lock.acquire(timeout=CLOSE_WAIT)
        try:
            if self._dirty_ring is not None:
                self._dirty_ring.close()  # only our harvests read it; its guard serializes them
            addr = self.run_addr
            if addr is not None:

                def unmap():
                    self.run_addr, self._kvm_run = None, None
                    if idle:  # else the running thread still holds kvm_run: leak it rather than crash
                        self._view.release()
                        libc.munmap(addr, self._mmap_size)

                self._guard.unmap(unmap)
        finally:
            if idle:
                self._run_lock.release()

    @property
    def kvm_run(self) -> GuardedView:
        """This vCPU's kvm_run (api.rst 5), as a view that raises ClosedError once the vCPU is
        closed instead of touching the unmapped page."""
        if self._kvm_run is None:
            raise ClosedError(f"{self.name} is closed; its kvm_run is unmapped")
        return GuardedView(self._kvm_run, self._guard, f"{self.name} kvm_run")

    def write_response(self, exit_, generation: int, write) -> None:
        """Let `exit_`, read from KVM_RUN number `generation`, write its response into kvm_run
        (exits.Exit._write_response); ClosedError or StaleExitError where that would write into
        an unmapped page or over a later exit."""
        with self._guard.lock:
            if not self._guard.open:
                raise ClosedError(f"cannot respond to {exit_}: {self.name} is closed and its kvm_run unmapped")
            if generation != self.exits:
                raise StaleExitError(f"cannot respond to {exit_} from {self.name}: KVM_RUN was entered "
                                     f"{self.exits - generation} more time(s) since, so kvm_run no longer "
                                     "describes this exit (respond before the next run)")
            write(self._kvm_run, self._mmap_size)
            self._responded = generation

    @property
    def in_run(self) -> bool:
        """Whether a thread is inside run() or try_run() on this vCPU now."""
        return self._run_lock.locked()

    @property
    def responded(self) -> bool:
        """Whether respond() answered the exit of the last KVM_RUN (kvmtest.vm_state will not save
        a vCPU whose IN, MMIO read or RDMSR still awaits its data)."""
        return self._responded == self.exits

    def last_exit(self):
        """The exit the last KVM_RUN returned, parsed again from kvm_run (respond() on it works as on
        the one run() returned); None if that KVM_RUN returned EINTR or failed, or none ran: KVM then
        leaves kvm_run's exit as it was, but the exit is no longer pending."""
        with self._guard.lock:
            self._guard.check(f"reading {self.name}'s last exit")
            if self._exited != self.exits or self._kvm_run is None:
                return None
            return parse_exit(self._kvm_run, self._view, (self, self.exits))

    def drain_coalesced_ring(self) -> "list[S.kvm_coalesced_mmio]":
        """Take every write queued in the coalesced MMIO/PIO ring (api.rst KVM_REGISTER_COALESCED_MMIO: the ring
        sits at page KVM_CAP_COALESCED_MMIO of the vCPU mapping) and mark them consumed. The ring is
        the VM's: entries a VM this one was copied from had queued and nobody drained
        (kvmtest.vm_state, Vm.carried_coalesced) come first, as they were written first."""
        return self._coalesced_ring(consume=True)

    def peek_coalesced_ring(self) -> "list[S.kvm_coalesced_mmio]":
        """What drain_coalesced_ring would return, left in the ring (saving a VM is not draining it)."""
        return self._coalesced_ring(consume=False)

    def _coalesced_ring(self, consume: bool) -> "list[S.kvm_coalesced_mmio]":
        page = self.vm.check_extension("KVM_CAP_COALESCED_MMIO")
        if not page:
            raise KvmtestError(f"{self.name}: KVM_CAP_COALESCED_MMIO is 0, there is no coalesced ring")
        if (page + 1) * libc.PAGE_SIZE > self._mmap_size:
            raise KvmtestError(f"{self.name}: KVM_CAP_COALESCED_MMIO puts the ring at page {page}, outside the "
                               f"{self._mmap_size:#x}-byte vCPU mapping (KVM_GET_VCPU_MMAP_SIZE)")
        entry_size = ctypes.sizeof(S.kvm_coalesced_mmio)
        with self._guard.lock:  # close() cannot unmap the ring while we read it
            self._guard.check(f"draining {self.name}'s coalesced MMIO ring")
            if self.run_addr is None:
                raise ClosedError(f"draining {self.name}'s coalesced MMIO ring: {self.name} is closed")
            base = self.run_addr + page * libc.PAGE_SIZE
            ring = S.kvm_coalesced_mmio_ring.from_address(base)
            size = (libc.PAGE_SIZE - ctypes.sizeof(ring)) // entry_size
            first, last = ring.first, ring.last
            if first >= size or last >= size:
                raise KvmtestError(f"{self.name}: coalesced ring indices first={first} last={last} outside its "
                                   f"{size} entries")
            out = []
            while first != last:  # at most size - 1 entries: KVM keeps one slot free
                entry = base + ctypes.sizeof(ring) + first * entry_size
                out.append(S.kvm_coalesced_mmio.from_buffer_copy(ctypes.string_at(entry, entry_size)))
                first = (first + 1) % size
            carried = list(self.vm.carried_coalesced)
            if consume:
                ring.first = first
                self.vm.carried_coalesced.clear()
        return carried + out

    @property
    def dirty_ring(self):
        """This vCPU's dirty ring (kvmtest.dirty_ring.DirtyRing)."""
        if self._dirty_ring is None:
            raise KvmtestError(f"{self.name}: no dirty ring; call Vm.enable_dirty_ring(size) before the "
                               "VM's first vCPU is created (api.rst 8.29)")
        return self._dirty_ring

    def _pre_fault(self, gpa, size, flags) -> tuple[S.kvm_pre_fault_memory, str]:
        rng = S.kvm_pre_fault_memory(gpa=validate.uint(gpa, 64, f"{self.name} KVM_PRE_FAULT_MEMORY gpa"),
                                     size=validate.uint(size, 64, f"{self.name} KVM_PRE_FAULT_MEMORY size"),
                                     flags=validate.uint(flags, 64, f"{self.name} KVM_PRE_FAULT_MEMORY flags"))
        return rng, f"gpa={rng.gpa:#x} size={rng.size:#x}" + (f" flags={rng.flags:#x}" if rng.flags else "")

    def pre_fault_memory(self, gpa: int, size: int) -> int:
        """KVM_PRE_FAULT_MEMORY (api.rst 4.143, KVM_CAP_PRE_FAULT_MEMORY): map [gpa, gpa + size) for
        this vCPU ahead of its first access. KVM may stop early; returns the bytes it left (the
        struct's size on return). KvmError when it maps nothing (ENOENT outside memslots, EINVAL
        for a bad range, ...)."""
        rng, text = self._pre_fault(gpa, size, 0)
        self.ioctl("KVM_PRE_FAULT_MEMORY", rng, args=text)
        return rng.size

    def try_pre_fault_memory(self, gpa: int, size: int, flags: int = 0) -> tuple[int, int, int]:
        """pre_fault_memory's twin for any range and flags: (errno, gpa, size), the last two as KVM
        left them in the struct (errno 0 on success)."""
        rng, text = self._pre_fault(gpa, size, flags)
        err = self.try_ioctl("KVM_PRE_FAULT_MEMORY", rng, args=text)
        return err, rng.gpa, rng.size

    # --- running ---------------------------------------------------------------------------

    @property
    def timeout(self) -> float:
        """Seconds one KVM_RUN may take before the watchdog kicks it (a finite number above 0)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value) -> None:
        """Set the per-KVM_RUN timeout; InvalidTimeoutError for anything but a finite number above 0."""
        self._timeout = validate.timeout(value, f"timeout of {self.name}")

    def _expire(self, generation: int, thread_id: int) -> None:
        """The watchdog's kick for KVM_RUN number `generation`. Under the lock _enter takes to
        start a run, so a run seen in flight just before it ended never gets the next one kicked.

        The signal goes out under that lock too: sent after it, a run that ended on its own just
        then could be followed by the next one before the signal, which would land in that next
        KVM_RUN and end it with EINTR as if the caller had kicked it (a spurious IntrExit). Sent
        under it, the next run cannot begin until the signal is on its way, and the thread takes
        it on its way back to user space, before it can enter KVM_RUN again."""
        with self._guard.lock:
            run = self._kvm_run
            if self.exits != generation or self._run_thread is None or not self._guard.open or run is None:
                return
            self._timed_out = True
            run.immediate_exit = 1
            send_kick(thread_id)

    def kick(self, thread_id: int | None = None) -> None:
        """Make a KVM_RUN in progress (or the next one) return to user space."""
        if thread_id is not None:
            validate.int_in(thread_id, 1, (1 << 64) - 1, f"{self.name} kick thread_id")
        with self._guard.lock:  # the watchdog may kick while another thread closes the vCPU
            if self._guard.open and self._kvm_run is not None:
                self._kvm_run.immediate_exit = 1
        tid = thread_id or self._run_thread
        if tid is not None:
            send_kick(tid)

    def run(self, timeout: float | None = None):
        """One KVM_RUN (api.rst 4.10). Returns the typed Exit; IntrExit on EINTR.

        Raises GuestTimeout, naming the mode and RIP, when the guest is still running
        after `timeout` seconds (default self.timeout).
        """
        timeout = self._timeout if timeout is None else validate.timeout(timeout, f"{self.name} run() timeout")
        # The exit loop's hot path: locks taken with acquire/release, not `with` (half the cost),
        # and _enter(timeout) written out.
        run_lock = self._run_lock
        run_lock.acquire()
        try:
            run = self._kvm_run
            if run is None:
                raise ClosedError(f"{self.name} is closed")
            guard = self._guard_lock  # see _expire
            guard.acquire()
            self._run_timeout = timeout  # stored before the run is counted: see Watchdog._loop
            self.exits = generation = self.exits + 1
            self._timed_out = False
            self._run_thread = _get_ident()
            guard.release()
            try:
                err = _last_errno() if self._enter_kvm_run() == -1 else 0
                if err == _EAGAIN:
                    err = self._enter_again(timeout)
            finally:
                # Under the lock _expire takes: it either kicked this run before (and _timed_out
                # says so here) or finds it over and leaves immediate_exit alone.
                guard.acquire()
                self._run_thread = None
                timed_out = self._timed_out
                guard.release()
            if timed_out or err == _EINTR:
                # The kick (or the caller's immediate_exit) must not make the next KVM_RUN
                # return at once; an exit that came just as the watchdog kicked is kept.
                run.immediate_exit = 0
            if err == 0:
                self._exited = generation
                reason = run.exit_reason
                exit_ = _parser(reason, UNPARSED)(reason, run, self._view, (self, generation))
                _trace_append(exit_)  # read back as (self.name, "exit", exit_): Exit.trace_parts
                return exit_
            if err == _EINTR and not timed_out:
                return IntrExit(C.KVM_EXIT_INTR, (self, generation))
        finally:
            run_lock.release()
        if timed_out and err in (errno.EINTR, errno.EAGAIN):
            self._raise_timeout(timeout)
        _ioctl.note(self.name, "KVM_RUN", f"-> {errno_name(err)}")
        raise KvmError(err, "KVM_RUN", self.name, "", "", _ioctl.recent())

    def _enter_again(self, timeout: float) -> int:
        """An AP waiting for INIT/SIPI (KVM_MP_STATE_UNINITIALIZED) comes back with EAGAIN once
        an event arrives; KVM expects user space to simply enter again, until the watchdog's
        kick. In case none comes (its thread stalled), this stops on its own `timeout` seconds
        after the first EAGAIN."""
        deadline = time.monotonic() + timeout
        err = errno.EAGAIN
        while err == errno.EAGAIN and not self._timed_out:
            if time.monotonic() > deadline:
                self._timed_out = True
                break
            err = _last_errno() if self._enter_kvm_run() == -1 else 0
        return err

    def _enter(self, timeout: float) -> tuple[int, bool]:
        """One KVM_RUN under the watchdog's timeout, nothing retried: (errno, whether the watchdog
        kicked it). Call with _run_lock held and _kvm_run set (run() has the same steps written out)."""
        with self._guard.lock:  # see _expire
            self._run_timeout = timeout  # see Watchdog._loop
            self.exits += 1
            self._timed_out = False
            self._run_thread = threading.get_ident()
        err = 0
        try:
            err = _last_errno() if self._enter_kvm_run() == -1 else 0
        finally:
            with self._guard.lock:  # see run()
                self._run_thread = None
                timed_out = self._timed_out
        return err, timed_out

    def try_run(self, timeout: float | None = None) -> int:
        """KVM_RUN once, returning the errno (0 on success), for negative tests.

        Nothing is retried: with kvm_run.immediate_exit set, or a signal pending, this returns
        EINTR (api.rst 5, "immediate_exit"), and immediate_exit is left as the caller set it.
        The watchdog still bounds it: a guest that does not exit within `timeout` (default
        self.timeout) raises GuestTimeout.
        """
        timeout = self._timeout if timeout is None else validate.timeout(timeout, f"{self.name} try_run() timeout")
        with self._run_lock:
            run = self._kvm_run
            if run is None:
                raise ClosedError(f"{self.name} is closed")
            err, timed_out = self._enter(timeout)
            if not err:
                self._exited = self.exits
            if timed_out:
                run.immediate_exit = 0
        _ioctl.note(self.name, "KVM_RUN", f"-> {errno_name(err)}" if err else "-> 0")
        if timed_out and err in (errno.EINTR, errno.EAGAIN):
            self._raise_timeout(timeout)
        return err

    def _raise_timeout(self, timeout: float):
        try:
            regs, sregs = self.get_regs(), self.get_sregs()
            where = f"in {describe_mode(sregs)} at RIP {regs.rip:#x} (CS base {sregs.cs.base:#x})"
        except KvmtestError as e:  # KvmError, or ClosedError if another thread closed the vCPU
            where = f"(registers unreadable: {e})"
        raise GuestTimeout(f"{self.name}: guest still running after {timeout:g}s {where}")
