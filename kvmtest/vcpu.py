"""A vCPU: register state, MSRs, CPUID, events, debug, and KVM_RUN with a timeout.

KVM_RUN is issued through ctypes (kvmtest.libc), never fcntl.ioctl, so EINTR comes back
to us on every Python version. A stuck guest is kicked by the watchdog: it sets
kvm_run.immediate_exit and sends SIG_KICK to the thread inside KVM_RUN (api.rst 5,
"immediate_exit"; KVM_RUN returns -EINTR when a signal is pending).
"""

import ctypes
import errno
import signal
import threading
import time
import weakref

from . import ioctl as _ioctl
from . import libc
from .abi import constants as C
from .abi import structs as S
from .abi.constants import errno_name
from . import validate
from .errors import BadArgumentError, ClosedError, GuestTimeout, KvmError, KvmtestError, StaleExitError
from .carried import VCPU_STATE_IOCTLS, CarriedIoctls, replayable
from .exits import IntrExit, parse_exit
from .fdobject import FdObject
from .kvm import KVM_MAX_CPUID_ENTRIES
from .mapped import GuardedView, MappingGuard

KVM_CPUID_FEATURES = 0x40000001  # Documentation/virt/kvm/x86/cpuid.rst

DEFAULT_RUN_TIMEOUT = 10.0  # seconds for one KVM_RUN; override per call or KVMTEST_GUEST_TIMEOUT
SIG_KICK = signal.SIGRTMIN + 3
CLOSE_WAIT = 5.0  # seconds close() waits for a KVM_RUN on another thread to return after its kick
_kick_installed = False


def install_kick_handler() -> bool:
    """Install the no-op SIG_KICK handler (main thread only). Python installs handlers without
    SA_RESTART, so the signal makes KVM_RUN return EINTR instead of being restarted."""
    global _kick_installed
    if _kick_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(SIG_KICK, lambda signum, frame: None)
    _kick_installed = True
    return True


class _Watchdog:
    """One thread per process that kicks vCPUs whose KVM_RUN has passed its deadline.

    Registering costs a couple of attribute writes per KVM_RUN, so the exit loop stays
    close to C speed; the deadline is checked every `tick` seconds.
    """

    tick = 0.02

    def __init__(self):
        self.running: "weakref.WeakSet[Vcpu]" = weakref.WeakSet()
        self.lock = threading.Lock()
        self.thread = None

    def watch(self, vcpu: "Vcpu") -> None:
        with self.lock:
            self.running.add(vcpu)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="kvmtest-watchdog", daemon=True)
                self.thread.start()

    def _loop(self):
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            with self.lock:
                vcpus = list(self.running)
            for vcpu in vcpus:
                generation = vcpu.exits  # read before the deadline: see Vcpu._expire
                deadline, tid = vcpu._deadline, vcpu._run_thread
                if deadline is not None and tid is not None and now > deadline and not vcpu._timed_out:
                    vcpu._expire(generation, tid)


_watchdog = _Watchdog()


def describe_mode(sregs: S.kvm_sregs) -> str:
    """A short name for the CPU mode sregs describe (real, pm16, pm32, paging32, pae, long64, compat32)."""
    cr0, cr4, efer = sregs.cr0, sregs.cr4, sregs.efer
    cpl = sregs.ss.dpl if cr0 & 1 else 0
    if not cr0 & 1:
        return "real"
    if efer & (1 << 10) and cr0 & (1 << 31):
        mode = "long64" if sregs.cs.l else "compat32"
    elif cr0 & (1 << 31):
        mode = "pae" if cr4 & (1 << 5) else "paging32"
    else:
        mode = "pm32" if sregs.cs.db else "pm16"
    return f"{mode}-cpl{cpl}" if cpl else mode


class Vcpu(CarriedIoctls, FdObject):
    """A KVM vCPU with its mapped kvm_run structure."""

    STATE_IOCTLS = VCPU_STATE_IOCTLS  # see kvmtest.carried

    def __init__(self, vm, fd: int, vcpu_id: int):
        super().__init__(fd, f"{vm.name}/vcpu{vcpu_id}")
        self.vm = vm
        self.id = vcpu_id
        self._mmap_size = vm.kvm.vcpu_mmap_size()
        self.run_addr = None
        self._kvm_run = None
        # close() unmaps kvm_run only through this guard and with _run_lock held, which run()
        # holds from KVM_RUN until it has read the exit: nothing reads the mapping after munmap.
        self._guard = MappingGuard(f"{self.name}'s kvm_run")
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
        self._timeout = DEFAULT_RUN_TIMEOUT
        self._deadline = None
        self._run_thread = None
        self._timed_out = False
        self.exits = 0  # KVM_RUN calls so far; an exit remembers which one it came from
        self._view = memoryview((ctypes.c_char * self._mmap_size).from_address(self.run_addr)).cast("B")
        if vm.dirty_ring_size:
            from .dirty_ring import DirtyRing

            try:
                self._dirty_ring = DirtyRing(self, vm.dirty_ring_size)
            except OSError:
                self.close()
                raise
        install_kick_handler()
        _watchdog.watch(self)

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
            if self.run_addr is not None:

                def unmap():
                    addr, self.run_addr, self._kvm_run = self.run_addr, None, None
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
            if self._exited != self.exits:
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

    # --- running ---------------------------------------------------------------------------

    @property
    def timeout(self) -> float:
        """Seconds one KVM_RUN may take before the watchdog kicks it (a finite number above 0)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value) -> None:
        self._timeout = validate.timeout(value, f"timeout of {self.name}")

    def _expire(self, generation: int, thread_id: int) -> None:
        """The watchdog's kick for KVM_RUN number `generation`. Under the lock _enter takes to
        start a run, so a deadline read just before that run ended never kicks the next one."""
        with self._guard.lock:
            if self.exits != generation or self._deadline is None or not self._guard.open:
                return
            self._timed_out = True
            self._kvm_run.immediate_exit = 1
        if _kick_installed:
            try:
                signal.pthread_kill(thread_id, SIG_KICK)
            except (ProcessLookupError, OSError):
                pass

    def kick(self, thread_id: int | None = None) -> None:
        """Make a KVM_RUN in progress (or the next one) return to user space."""
        if thread_id is not None:
            validate.int_in(thread_id, 1, (1 << 64) - 1, f"{self.name} kick thread_id")
        with self._guard.lock:  # the watchdog may kick while another thread closes the vCPU
            if self._guard.open:
                self._kvm_run.immediate_exit = 1
        tid = thread_id or self._run_thread
        if tid is not None and _kick_installed:
            try:
                signal.pthread_kill(tid, SIG_KICK)
            except (ProcessLookupError, OSError):
                pass

    def run(self, timeout: float | None = None):
        """One KVM_RUN (api.rst 4.10). Returns the typed Exit; IntrExit on EINTR.

        Raises GuestTimeout, naming the mode and RIP, when the guest is still running
        after `timeout` seconds (default self.timeout).
        """
        timeout = self._timeout if timeout is None else validate.timeout(timeout, f"{self.name} run() timeout")
        with self._run_lock:
            run = self._kvm_run
            if run is None:
                raise ClosedError(f"{self.name} is closed")
            # _enter(timeout, retry_eagain=True), written out: this is the exit loop's hot path.
            guard = self._guard.lock
            guard.acquire()
            self.exits += 1
            self._timed_out = False
            self._run_thread = threading.get_ident()
            self._deadline = deadline = time.monotonic() + timeout
            guard.release()
            try:
                err = _ioctl.run_vcpu(self._fd)
                if err == errno.EAGAIN:
                    err = self._enter_again(deadline)
            finally:
                self._deadline = None
                self._run_thread = None
            timed_out = self._timed_out
            if timed_out or err == errno.EINTR:
                # The kick (or the caller's immediate_exit) must not make the next KVM_RUN
                # return at once; an exit that came just as the watchdog kicked is kept.
                run.immediate_exit = 0
            if err == 0:
                self._exited = self.exits
                exit_ = parse_exit(run, self._view, (self, self.exits))
                _ioctl.note(self.name, "exit", exit_)
                return exit_
            if err == errno.EINTR and not timed_out:
                return IntrExit(C.KVM_EXIT_INTR, (self, self.exits))
        if timed_out and err in (errno.EINTR, errno.EAGAIN):
            self._raise_timeout(timeout)
        _ioctl.note(self.name, "KVM_RUN", f"-> {errno_name(err)}")
        raise KvmError(err, "KVM_RUN", self.name, "", "", _ioctl.recent())

    def _enter_again(self, deadline: float) -> int:
        """An AP waiting for INIT/SIPI (KVM_MP_STATE_UNINITIALIZED) comes back with EAGAIN once
        an event arrives; KVM expects user space to simply enter again, until the deadline
        (checked here too, in case no kick can reach this thread)."""
        err = errno.EAGAIN
        while err == errno.EAGAIN and not self._timed_out:
            if time.monotonic() > deadline:
                self._timed_out = True
                break
            err = _ioctl.run_vcpu(self._fd)
        return err

    def _enter(self, timeout: float) -> int:
        """One KVM_RUN under the watchdog's deadline, nothing retried; returns the errno. Call
        with _run_lock held (run() has the same steps written out)."""
        with self._guard.lock:  # see _expire
            self.exits += 1
            self._timed_out = False
            self._run_thread = threading.get_ident()
            self._deadline = time.monotonic() + timeout
        try:
            return _ioctl.run_vcpu(self._fd)
        finally:
            self._deadline = None
            self._run_thread = None

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
            err = self._enter(timeout)
            if not err:
                self._exited = self.exits
            timed_out = self._timed_out
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

    # --- register state ----------------------------------------------------------------------

    def _get(self, request: str, struct_type):
        value = struct_type()
        self.ioctl(request, value)
        return value

    def get_regs(self) -> S.kvm_regs:
        return self._get("KVM_GET_REGS", S.kvm_regs)

    def _struct(self, value, kind, ioctl: str):
        """`value` if it is the UAPI struct `ioctl` takes: KVM reads sizeof(kind) bytes from the
        pointer, so any other object would hand it memory of another size and layout."""
        return validate.instance(value, kind, f"{self.name} {ioctl}")

    def set_regs(self, regs: S.kvm_regs) -> None:
        self._struct(regs, S.kvm_regs, "KVM_SET_REGS")
        self.ioctl("KVM_SET_REGS", regs, args=f"rip={regs.rip:#x} rflags={regs.rflags:#x}")

    def get_sregs(self) -> S.kvm_sregs:
        return self._get("KVM_GET_SREGS", S.kvm_sregs)

    def set_sregs(self, sregs: S.kvm_sregs) -> None:
        self._struct(sregs, S.kvm_sregs, "KVM_SET_SREGS")
        self.ioctl("KVM_SET_SREGS", sregs, args=sregs_args(sregs))

    def try_set_sregs(self, sregs: S.kvm_sregs) -> int:
        self._struct(sregs, S.kvm_sregs, "KVM_SET_SREGS")
        return self.try_ioctl("KVM_SET_SREGS", sregs, args=sregs_args(sregs))

    def get_fpu(self) -> S.kvm_fpu:
        return self._get("KVM_GET_FPU", S.kvm_fpu)

    def set_fpu(self, fpu: S.kvm_fpu) -> None:
        self._struct(fpu, S.kvm_fpu, "KVM_SET_FPU")
        self.ioctl("KVM_SET_FPU", fpu)

    def get_xsave(self) -> S.kvm_xsave:
        return self._get("KVM_GET_XSAVE", S.kvm_xsave)

    def set_xsave(self, xsave: S.kvm_xsave) -> None:
        """KVM_SET_XSAVE (api.rst KVM_SET_XSAVE): a kvm_xsave, or a get_xsave2() buffer. KVM reads
        KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes (at least 4096), so a smaller buffer is refused."""
        if not (isinstance(xsave, S.kvm_xsave) or (isinstance(xsave, ctypes.Structure) and hasattr(xsave, "region"))):
            raise BadArgumentError(f"{self.name} KVM_SET_XSAVE: expected a kvm_xsave (or a get_xsave2() buffer), "
                                   f"got {xsave!r:.80}")
        needed = self._xsave_size()
        if ctypes.sizeof(xsave) < needed:
            raise BadArgumentError(f"{self.name} KVM_SET_XSAVE: a {ctypes.sizeof(xsave)}-byte buffer, but KVM reads "
                                   f"{needed} (KVM_CAP_XSAVE2); take it from get_xsave2({needed})")
        self.ioctl("KVM_SET_XSAVE", xsave)

    def get_xcrs(self) -> S.kvm_xcrs:
        return self._get("KVM_GET_XCRS", S.kvm_xcrs)

    def set_xcrs(self, xcrs: S.kvm_xcrs) -> None:
        self._struct(xcrs, S.kvm_xcrs, "KVM_SET_XCRS")
        self.ioctl("KVM_SET_XCRS", xcrs, args=f"nr_xcrs={xcrs.nr_xcrs}")

    def get_debugregs(self) -> S.kvm_debugregs:
        return self._get("KVM_GET_DEBUGREGS", S.kvm_debugregs)

    def set_debugregs(self, dbg: S.kvm_debugregs) -> None:
        self._struct(dbg, S.kvm_debugregs, "KVM_SET_DEBUGREGS")
        self.ioctl("KVM_SET_DEBUGREGS", dbg, args=f"dr6={dbg.dr6:#x} dr7={dbg.dr7:#x}")

    def get_events(self) -> S.kvm_vcpu_events:
        return self._get("KVM_GET_VCPU_EVENTS", S.kvm_vcpu_events)

    def set_events(self, events: S.kvm_vcpu_events) -> None:
        self._struct(events, S.kvm_vcpu_events, "KVM_SET_VCPU_EVENTS")
        self.ioctl("KVM_SET_VCPU_EVENTS", events, args=f"flags={events.flags:#x}")

    def get_mp_state(self) -> int:
        return self._get("KVM_GET_MP_STATE", S.kvm_mp_state).mp_state

    def set_mp_state(self, state: int) -> None:
        state = validate.uint(state, 32, f"{self.name} KVM_SET_MP_STATE mp_state")
        self.ioctl("KVM_SET_MP_STATE", S.kvm_mp_state(state), args=C.MP_STATE_NAMES.name(state))

    def get_lapic(self) -> S.kvm_lapic_state:
        return self._get("KVM_GET_LAPIC", S.kvm_lapic_state)

    def set_lapic(self, lapic: S.kvm_lapic_state) -> None:
        self._struct(lapic, S.kvm_lapic_state, "KVM_SET_LAPIC")
        self.ioctl("KVM_SET_LAPIC", lapic)

    # --- state for save/restore (kvmtest.state) -----------------------------------------------

    def get_sregs2(self) -> S.kvm_sregs2:
        """KVM_GET_SREGS2 (api.rst KVM_GET_SREGS2): sregs plus the PAE PDPTRs, no interrupt bitmap."""
        return self._get("KVM_GET_SREGS2", S.kvm_sregs2)

    def set_sregs2(self, sregs2: S.kvm_sregs2) -> None:
        self._struct(sregs2, S.kvm_sregs2, "KVM_SET_SREGS2")
        self.ioctl("KVM_SET_SREGS2", sregs2, args=f"{sregs_args(sregs2)} flags={sregs2.flags:#x}")

    def get_xsave2(self, size: int):
        """KVM_GET_XSAVE2 into a buffer of `size` bytes (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2), api.rst
        KVM_GET_XSAVE2); KVM_SET_XSAVE takes the same buffer back. KVM writes that many bytes
        whatever the buffer, so a smaller `size` is refused rather than overrun."""
        size = validate.uint(size, 32, f"{self.name} KVM_GET_XSAVE2 size")
        needed = self._xsave_size()
        if size < needed:
            raise BadArgumentError(f"{self.name} KVM_GET_XSAVE2 size = {size}: KVM writes {needed} bytes "
                                   "(KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)), which would overrun the buffer")
        buf = S.xsave_type(size)()
        self.ioctl("KVM_GET_XSAVE2", buf, args=f"size={size}")
        return buf

    def _xsave_size(self) -> int:
        """The bytes KVM_GET_XSAVE2 writes and KVM_SET_XSAVE reads (api.rst KVM_CAP_XSAVE2; a
        kernel without it uses struct kvm_xsave)."""
        return max(self.vm.check_extension("KVM_CAP_XSAVE2"), ctypes.sizeof(S.kvm_xsave))

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ (api.rst KVM_GET_TSC_KHZ)."""
        return self.ioctl("KVM_GET_TSC_KHZ")

    def set_tsc_khz(self, khz: int) -> None:
        """KVM_SET_TSC_KHZ on the vCPU (api.rst KVM_SET_TSC_KHZ, KVM_CAP_TSC_CONTROL). KVM reads the
        argument as a __u32 and takes 0 to mean the host's rate, so 0 and anything wider are
        refused here; try_set_tsc_khz passes any 32-bit value."""
        khz = validate.uint(khz, 32, f"{self.name} KVM_SET_TSC_KHZ kHz")
        if khz == 0:
            raise BadArgumentError(f"{self.name} KVM_SET_TSC_KHZ kHz = 0: no frequency (KVM would take the "
                                   "host's rate); use try_set_tsc_khz(0) to probe that")
        self.ioctl("KVM_SET_TSC_KHZ", khz, args=f"khz={khz}")

    def try_set_tsc_khz(self, khz: int) -> int:
        khz = validate.uint(khz, 32, f"{self.name} KVM_SET_TSC_KHZ kHz")
        return self.try_ioctl("KVM_SET_TSC_KHZ", khz, args=f"khz={khz}")

    def get_nested_state(self, size: int):
        """KVM_GET_NESTED_STATE with a buffer of `size` bytes (KVM_CHECK_EXTENSION(KVM_CAP_NESTED_STATE)).
        KVM trusts kvm_nested_state.size (a __u32) as the buffer's length: a wrapped size would let it
        write past the buffer."""
        size = validate.uint(size, 32, f"{self.name} KVM_GET_NESTED_STATE size")
        buf = S.nested_state_type(size)(size=size)
        self.ioctl("KVM_GET_NESTED_STATE", buf, args=f"size={size}")
        return buf

    def set_nested_state(self, state) -> None:
        if not isinstance(state, (S.kvm_nested_state, ctypes.Structure)) or not hasattr(state, "format"):
            raise BadArgumentError(f"{self.name} KVM_SET_NESTED_STATE: expected a kvm_nested_state (from "
                                   f"get_nested_state), got {state!r:.80}")
        if state.size > ctypes.sizeof(state):
            raise BadArgumentError(f"{self.name} KVM_SET_NESTED_STATE: size = {state.size}, but the buffer holds "
                                   f"{ctypes.sizeof(state)} bytes; KVM would read past it")
        self.ioctl("KVM_SET_NESTED_STATE", state, args=f"flags={state.flags:#x} format={state.format} size={state.size}")

    def has_device_attr(self, group: int, attr: int) -> bool:
        """KVM_HAS_DEVICE_ATTR on the vCPU fd (devices/vcpu.rst); False where KVM refuses it."""
        group, attr = self._device_attr(group, attr, "KVM_HAS_DEVICE_ATTR")
        return self.try_ioctl("KVM_HAS_DEVICE_ATTR", S.kvm_device_attr(group=group, attr=attr),
                              args=f"group={group} attr={attr}") == 0

    def _device_attr(self, group, attr, ioctl) -> tuple[int, int]:
        """kvm_device_attr: group is a __u32, attr a __u64."""
        return (validate.uint(group, 32, f"{self.name} {ioctl} group"),
                validate.uint(attr, 64, f"{self.name} {ioctl} attr"))

    def get_device_attr_u64(self, group: int, attr: int) -> int:
        group, attr = self._device_attr(group, attr, "KVM_GET_DEVICE_ATTR")
        value = ctypes.c_uint64()
        self.ioctl("KVM_GET_DEVICE_ATTR", S.kvm_device_attr(group=group, attr=attr, addr=ctypes.addressof(value)),
                   args=f"group={group} attr={attr}")
        return value.value

    def set_device_attr_u64(self, group: int, attr: int, data: int) -> None:
        group, attr = self._device_attr(group, attr, "KVM_SET_DEVICE_ATTR")
        value = ctypes.c_uint64(validate.uint(data, 64, f"{self.name} KVM_SET_DEVICE_ATTR value"))
        self.ioctl("KVM_SET_DEVICE_ATTR", S.kvm_device_attr(group=group, attr=attr, addr=ctypes.addressof(value)),
                   args=f"group={group} attr={attr} value={data:#x}")

    # --- MSRs and CPUID ---------------------------------------------------------------------------

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS (api.rst 4.18). Raises if KVM returns fewer MSRs than asked for."""
        indices = validate.uints(indices, 32, f"{self.name} KVM_GET_MSRS index")
        buf = S.msrs_type(len(indices))()
        buf.nmsrs = len(indices)
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        n = self.ioctl("KVM_GET_MSRS", buf, args=_msr_names(indices))
        if n != len(indices):
            refused = f"; MSR {indices[n]:#x} was refused" if 0 <= n < len(indices) else ""
            raise KvmError(errno.EINVAL, "KVM_GET_MSRS", self.name, _msr_names(indices),
                           f"read {n} of {len(indices)} MSRs{refused}")
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def get_msr(self, index: int) -> int:
        return self.get_msrs([index])[index]

    def set_msrs(self, values: dict[int, int]) -> int:
        """KVM_SET_MSRS (api.rst 4.19); returns how many MSRs KVM accepted (stops at the first refused)."""
        validate.mapping(values, f"{self.name} KVM_SET_MSRS values (MSR index -> value)")
        for index, data in values.items():
            validate.uint(index, 32, f"{self.name} KVM_SET_MSRS index")
            validate.uint(data, 64, f"{self.name} KVM_SET_MSRS value of MSR {index:#x}")
        buf = S.msrs_type(len(values))()
        buf.nmsrs = len(values)
        for i, (index, data) in enumerate(values.items()):
            buf.entries[i].index, buf.entries[i].data = index, data
        return self.ioctl("KVM_SET_MSRS", buf, args=_msr_names(values))

    def set_msr(self, index: int, value: int) -> None:
        if self.set_msrs({index: value}) != 1:
            raise KvmError(errno.EINVAL, "KVM_SET_MSRS", self.name, f"msr={index:#x} data={value:#x}",
                           "KVM accepted 0 of 1 MSRs")

    def set_cpuid(self, entries) -> None:
        """KVM_SET_CPUID2 (api.rst KVM_SET_CPUID2)."""
        entries = cpuid_entries(entries)
        self.ioctl("KVM_SET_CPUID2", cpuid2_struct(entries), args=f"nent={len(entries)}")
        self._cpuid_nent = len(entries)

    def try_set_cpuid(self, entries) -> int:
        entries = cpuid_entries(entries)
        err = self.try_ioctl("KVM_SET_CPUID2", cpuid2_struct(entries), args=f"nent={len(entries)}")
        if not err:
            self._cpuid_nent = len(entries)
        return err

    def enforce_pv_features(self, features: int) -> None:
        """Give the vCPU KVM's supported CPUID with only `features` in the KVM feature leaf
        (0x40000001 EAX) and enable KVM_CAP_ENFORCE_PV_FEATURE_CPUID, so paravirtual MSRs and
        hypercalls outside `features` are refused (api.rst 7 KVM_CAP_ENFORCE_PV_FEATURE_CPUID)."""
        table = self.vm.kvm.supported_cpuid_copy()
        leaf = next((e for e in table if e.function == KVM_CPUID_FEATURES), None)
        if leaf is None:
            raise KvmtestError(f"{self.name}: KVM_GET_SUPPORTED_CPUID has no KVM feature leaf "
                               f"{KVM_CPUID_FEATURES:#x} to restrict")
        leaf.eax = validate.uint(features, 32, f"{self.name} KVM feature leaf {KVM_CPUID_FEATURES:#x} EAX")
        self.set_cpuid(table)
        self.enable_cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID", 1)

    def get_cpuid(self, nent: int | None = None):
        """KVM_GET_CPUID2 (api.rst KVM_GET_CPUID2): exactly the entries the vCPU has, in KVM's order.

        KVM fails with E2BIG while nent is below the vCPU's entry count, so the count is the
        smallest nent that succeeds; it is found that way rather than read from the nent KVM
        writes back, which some kernels (6.1) leave as passed, so that a 256-entry buffer
        would come back with its unused, zeroed entries. The count last given to
        KVM_SET_CPUID2 is tried first (two calls); otherwise a binary search. `nent` caps the
        search (default and most: KVM_MAX_CPUID_ENTRIES).
        """
        limit = KVM_MAX_CPUID_ENTRIES if nent is None else validate.uint(nent, 32, f"{self.name} get_cpuid nent")
        if not 1 <= limit <= KVM_MAX_CPUID_ENTRIES:
            raise BadArgumentError(f"{self.name} get_cpuid nent = {limit}: must be 1 to "
                                            f"{KVM_MAX_CPUID_ENTRIES} (KVM_MAX_CPUID_ENTRIES)")

        def fits(n: int):
            buf = S.cpuid2_type(n)()
            buf.nent = n
            err = self.try_ioctl("KVM_GET_CPUID2", buf, args=f"nent={n}")
            if err not in (0, errno.E2BIG):
                raise KvmError(err, "KVM_GET_CPUID2", self.name, f"nent={n}", "", _ioctl.recent())
            return (buf if not err else None)

        hint = self._cpuid_nent
        if hint is not None and hint <= limit:
            buf = fits(hint)
            if buf is not None and (hint == 0 or fits(hint - 1) is None):
                return [buf.entries[i] for i in range(hint)]
        best = fits(limit)
        if best is None:
            raise KvmError(errno.E2BIG, "KVM_GET_CPUID2", self.name, f"nent={limit}",
                           f"the vCPU has more than {limit} CPUID entries", _ioctl.recent())
        low, high = 0, limit  # fits(high) succeeded; the count lies in [low, high]
        while low < high:
            mid = (low + high) // 2
            buf = fits(mid)
            if buf is None:
                low = mid + 1
            else:
                high, best = mid, buf
        return [best.entries[i] for i in range(high)]

    # --- events, debug, translation ----------------------------------------------------------------

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT (api.rst 4.16): queue an external interrupt (user-space irqchip only)."""
        vector = validate.uint(vector, 32, f"{self.name} KVM_INTERRUPT irq")
        self.ioctl("KVM_INTERRUPT", S.kvm_interrupt(vector), args=f"irq={vector}")

    def try_interrupt(self, vector: int) -> int:
        vector = validate.uint(vector, 32, f"{self.name} KVM_INTERRUPT irq")
        return self.try_ioctl("KVM_INTERRUPT", S.kvm_interrupt(vector), args=f"irq={vector}")

    def nmi(self) -> None:
        self.ioctl("KVM_NMI")

    def smi(self) -> None:
        """KVM_SMI (api.rst KVM_SMI, KVM_CAP_X86_SMM): queue an SMI on this vCPU."""
        self.ioctl("KVM_SMI")

    @replayable  # no KVM_GET_GUEST_DEBUG: a copy of the vCPU makes the same call (kvmtest.state)
    def set_guest_debug(self, control: int, debugreg=(0,) * 8) -> None:
        """KVM_SET_GUEST_DEBUG (api.rst 4.87); `debugreg` fills kvm_guest_debug_arch.debugreg[8]
        (DR0-DR3, then DR7 at index 7 on x86)."""
        control = validate.uint(control, 32, f"{self.name} KVM_SET_GUEST_DEBUG control")
        debugreg = validate.uints(debugreg, 64, f"{self.name} KVM_SET_GUEST_DEBUG debugreg", indexed=True)
        if len(debugreg) > len(S.kvm_guest_debug_arch().debugreg):
            raise BadArgumentError(f"{self.name} KVM_SET_GUEST_DEBUG: {len(debugreg)} debugreg values, but "
                                            "kvm_guest_debug_arch.debugreg holds 8")
        dbg = S.kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg):
            dbg.arch.debugreg[i] = validate.uint(value, 64, f"{self.name} KVM_SET_GUEST_DEBUG debugreg[{i}]")
        self.ioctl("KVM_SET_GUEST_DEBUG", dbg, args=f"control={control:#x}")

    def translate(self, gva: int) -> S.kvm_translation:
        """KVM_TRANSLATE (api.rst 4.15)."""
        gva = validate.uint(gva, 64, f"{self.name} KVM_TRANSLATE linear address")
        tr = S.kvm_translation(linear_address=gva)
        self.ioctl("KVM_TRANSLATE", tr, args=f"gva={gva:#x}")
        return tr

    @replayable  # no way to read a vCPU capability back: a copy of the vCPU enables it again
    def enable_cap(self, cap, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the vCPU (api.rst 4.37, section 6)."""
        self.ioctl("KVM_ENABLE_CAP", self.vm.enable_cap_struct(cap, *args, flags=flags),
                   args=self.vm._cap_args(cap, args, flags))

    def stats(self):
        """KVM_GET_STATS_FD on the vCPU (api.rst 4.133)."""
        from .stats import Stats

        return Stats(self.ioctl("KVM_GET_STATS_FD"), f"{self.name}/stats")


def cpuid_entries(entries) -> list:
    """`entries` as a list, refusing None, a string or a single entry by name."""
    if isinstance(entries, (str, bytes, S.kvm_cpuid_entry2)) or not hasattr(entries, "__iter__"):
        raise BadArgumentError(f"KVM_SET_CPUID2: expected a list of kvm_cpuid_entry2, got {entries!r:.80}")
    return list(entries)


def cpuid2_struct(entries):
    for i, e in enumerate(entries):
        if not isinstance(e, S.kvm_cpuid_entry2):
            raise BadArgumentError(f"KVM_SET_CPUID2 entry {i}: expected a kvm_cpuid_entry2, got {e!r}")
    buf = S.cpuid2_type(len(entries))()
    buf.nent = len(entries)
    for i, e in enumerate(entries):
        ctypes.memmove(ctypes.addressof(buf.entries[i]), ctypes.addressof(e), ctypes.sizeof(e))
    return buf


def sregs_args(sregs: S.kvm_sregs) -> str:
    return (f"cr0={sregs.cr0:#x} cr3={sregs.cr3:#x} cr4={sregs.cr4:#x} efer={sregs.efer:#x} "
            f"cs={sregs.cs.selector:#x}")


def _msr_names(indices) -> str:
    return "msrs=" + ",".join(hex(i) for i in indices)
