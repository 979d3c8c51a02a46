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
from .errors import GuestTimeout, KvmError, KvmtestError
from .exits import IntrExit, parse_exit
from .fdobject import FdObject

KVM_CPUID_FEATURES = 0x40000001  # Documentation/virt/kvm/x86/cpuid.rst

DEFAULT_RUN_TIMEOUT = 10.0  # seconds for one KVM_RUN; override per call or KVMTEST_GUEST_TIMEOUT
SIG_KICK = signal.SIGRTMIN + 3
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
                deadline, tid = vcpu._deadline, vcpu._run_thread
                if deadline is not None and tid is not None and now > deadline and not vcpu._timed_out:
                    vcpu._timed_out = True
                    vcpu.kick(tid)


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


class Vcpu(FdObject):
    """A KVM vCPU with its mapped kvm_run structure."""

    def __init__(self, vm, fd: int, vcpu_id: int):
        super().__init__(fd, f"{vm.name}/vcpu{vcpu_id}")
        self.vm = vm
        self.id = vcpu_id
        self._mmap_size = vm.kvm.vcpu_mmap_size()
        self.run_addr = None
        try:
            self.run_addr = libc.mmap(self._mmap_size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd)
        except OSError:
            self.close()
            raise
        self.kvm_run = S.kvm_run.from_address(self.run_addr)
        self.timeout = DEFAULT_RUN_TIMEOUT
        self._deadline = None
        self._run_thread = None
        self._timed_out = False
        self.exits = 0
        self._view = memoryview((ctypes.c_char * self._mmap_size).from_address(self.run_addr)).cast("B")
        self._dirty_ring = None
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
        if getattr(self, "_dirty_ring", None) is not None:
            self._dirty_ring.close()
        if self.run_addr is not None:
            addr, self.run_addr = self.run_addr, None
            self.kvm_run = None
            self._view.release()
            libc.munmap(addr, self._mmap_size)

    def drain_coalesced_ring(self) -> "list[S.kvm_coalesced_mmio]":
        """Take every write queued in the coalesced MMIO/PIO ring (api.rst KVM_REGISTER_COALESCED_MMIO: the ring
        sits at page KVM_CAP_COALESCED_MMIO of the vCPU mapping) and mark them consumed."""
        page = self.vm.check_extension("KVM_CAP_COALESCED_MMIO")
        if not page:
            raise KvmtestError(f"{self.name}: KVM_CAP_COALESCED_MMIO is 0, there is no coalesced ring")
        base = self.run_addr + page * libc.PAGE_SIZE
        ring = S.kvm_coalesced_mmio_ring.from_address(base)
        size = (libc.PAGE_SIZE - ctypes.sizeof(ring)) // ctypes.sizeof(S.kvm_coalesced_mmio)
        first, last = ring.first, ring.last
        if first >= size or last >= size:
            raise KvmtestError(f"{self.name}: coalesced ring indices first={first} last={last} outside its "
                               f"{size} entries")
        out = []
        while first != last:  # at most size - 1 entries: KVM keeps one slot free
            entry = base + ctypes.sizeof(ring) + first * ctypes.sizeof(S.kvm_coalesced_mmio)
            out.append(S.kvm_coalesced_mmio.from_buffer_copy(ctypes.string_at(entry, ctypes.sizeof(S.kvm_coalesced_mmio))))
            first = (first + 1) % size
        ring.first = first
        return out

    @property
    def dirty_ring(self):
        """This vCPU's dirty ring (kvmtest.dirty_ring.DirtyRing)."""
        if self._dirty_ring is None:
            raise KvmtestError(f"{self.name}: no dirty ring; call Vm.enable_dirty_ring(size) before the "
                               "VM's first vCPU is created (api.rst 8.29)")
        return self._dirty_ring

    # --- running ---------------------------------------------------------------------------

    def kick(self, thread_id: int | None = None) -> None:
        """Make a KVM_RUN in progress (or the next one) return to user space."""
        run = self.kvm_run
        if run is not None:
            run.immediate_exit = 1
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
        timeout = self.timeout if timeout is None else timeout
        fd = self.fd
        self._timed_out = False
        self._run_thread = threading.get_ident()
        self._deadline = time.monotonic() + timeout
        try:
            err = _ioctl.run_vcpu(fd)
            # An AP waiting for INIT/SIPI (KVM_MP_STATE_UNINITIALIZED) comes back with EAGAIN
            # once an event arrives; KVM expects user space to simply enter again.
            while err == errno.EAGAIN and not self._timed_out:
                err = _ioctl.run_vcpu(fd)
        finally:
            self._deadline = None
            self._run_thread = None
        self.exits += 1
        if err == errno.EINTR:
            self.kvm_run.immediate_exit = 0
            if self._timed_out:
                self._raise_timeout(timeout)
            return IntrExit(C.KVM_EXIT_INTR, self.kvm_run)
        if err:
            _ioctl.note(self.name, "KVM_RUN", f"-> {errno_name(err)}")
            raise KvmError(err, "KVM_RUN", self.name, "", "", _ioctl.recent())
        exit_ = parse_exit(self.kvm_run, self._view)
        _ioctl.note(self.name, "exit", exit_)
        return exit_

    def try_run(self) -> int:
        """KVM_RUN once without a watchdog, returning the errno (for negative tests)."""
        return self.try_ioctl("KVM_RUN")

    def _raise_timeout(self, timeout: float):
        try:
            regs, sregs = self.get_regs(), self.get_sregs()
            where = f"in {describe_mode(sregs)} at RIP {regs.rip:#x} (CS base {sregs.cs.base:#x})"
        except KvmError as e:
            where = f"(registers unreadable: {e})"
        raise GuestTimeout(f"{self.name}: guest still running after {timeout:g}s {where}")

    # --- register state ----------------------------------------------------------------------

    def _get(self, request: str, struct_type):
        value = struct_type()
        self.ioctl(request, value)
        return value

    def get_regs(self) -> S.kvm_regs:
        return self._get("KVM_GET_REGS", S.kvm_regs)

    def set_regs(self, regs: S.kvm_regs) -> None:
        self.ioctl("KVM_SET_REGS", regs, args=f"rip={regs.rip:#x} rflags={regs.rflags:#x}")

    def get_sregs(self) -> S.kvm_sregs:
        return self._get("KVM_GET_SREGS", S.kvm_sregs)

    def set_sregs(self, sregs: S.kvm_sregs) -> None:
        self.ioctl("KVM_SET_SREGS", sregs, args=sregs_args(sregs))

    def try_set_sregs(self, sregs: S.kvm_sregs) -> int:
        return self.try_ioctl("KVM_SET_SREGS", sregs, args=sregs_args(sregs))

    def get_fpu(self) -> S.kvm_fpu:
        return self._get("KVM_GET_FPU", S.kvm_fpu)

    def set_fpu(self, fpu: S.kvm_fpu) -> None:
        self.ioctl("KVM_SET_FPU", fpu)

    def get_xsave(self) -> S.kvm_xsave:
        return self._get("KVM_GET_XSAVE", S.kvm_xsave)

    def set_xsave(self, xsave: S.kvm_xsave) -> None:
        self.ioctl("KVM_SET_XSAVE", xsave)

    def get_xcrs(self) -> S.kvm_xcrs:
        return self._get("KVM_GET_XCRS", S.kvm_xcrs)

    def set_xcrs(self, xcrs: S.kvm_xcrs) -> None:
        self.ioctl("KVM_SET_XCRS", xcrs, args=f"nr_xcrs={xcrs.nr_xcrs}")

    def get_debugregs(self) -> S.kvm_debugregs:
        return self._get("KVM_GET_DEBUGREGS", S.kvm_debugregs)

    def set_debugregs(self, dbg: S.kvm_debugregs) -> None:
        self.ioctl("KVM_SET_DEBUGREGS", dbg, args=f"dr6={dbg.dr6:#x} dr7={dbg.dr7:#x}")

    def get_events(self) -> S.kvm_vcpu_events:
        return self._get("KVM_GET_VCPU_EVENTS", S.kvm_vcpu_events)

    def set_events(self, events: S.kvm_vcpu_events) -> None:
        self.ioctl("KVM_SET_VCPU_EVENTS", events, args=f"flags={events.flags:#x}")

    def get_mp_state(self) -> int:
        return self._get("KVM_GET_MP_STATE", S.kvm_mp_state).mp_state

    def set_mp_state(self, state: int) -> None:
        self.ioctl("KVM_SET_MP_STATE", S.kvm_mp_state(state), args=C.MP_STATE_NAMES.name(state))

    def get_lapic(self) -> S.kvm_lapic_state:
        return self._get("KVM_GET_LAPIC", S.kvm_lapic_state)

    def set_lapic(self, lapic: S.kvm_lapic_state) -> None:
        self.ioctl("KVM_SET_LAPIC", lapic)

    # --- MSRs and CPUID ---------------------------------------------------------------------------

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS (api.rst 4.18). Raises if KVM returns fewer MSRs than asked for."""
        buf = S.msrs_type(len(indices))()
        buf.nmsrs = len(indices)
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        n = self.ioctl("KVM_GET_MSRS", buf, args=_msr_names(indices))
        if n != len(indices):
            raise KvmError(errno.EINVAL, "KVM_GET_MSRS", self.name, _msr_names(indices),
                           f"read {n} of {len(indices)} MSRs; MSR {indices[n]:#x} was refused")
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def get_msr(self, index: int) -> int:
        return self.get_msrs([index])[index]

    def set_msrs(self, values: dict[int, int]) -> int:
        """KVM_SET_MSRS (api.rst 4.19); returns how many MSRs KVM accepted (stops at the first refused)."""
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
        self.ioctl("KVM_SET_CPUID2", cpuid2_struct(entries), args=f"nent={len(entries)}")

    def try_set_cpuid(self, entries) -> int:
        return self.try_ioctl("KVM_SET_CPUID2", cpuid2_struct(entries), args=f"nent={len(entries)}")

    def enforce_pv_features(self, features: int) -> None:
        """Give the vCPU KVM's supported CPUID with only `features` in the KVM feature leaf
        (0x40000001 EAX) and enable KVM_CAP_ENFORCE_PV_FEATURE_CPUID, so paravirtual MSRs and
        hypercalls outside `features` are refused (api.rst 7 KVM_CAP_ENFORCE_PV_FEATURE_CPUID)."""
        table = self.vm.kvm.supported_cpuid_copy()
        leaf = next((e for e in table if e.function == KVM_CPUID_FEATURES), None)
        if leaf is None:
            raise KvmtestError(f"{self.name}: KVM_GET_SUPPORTED_CPUID has no KVM feature leaf "
                               f"{KVM_CPUID_FEATURES:#x} to restrict")
        leaf.eax = features
        self.set_cpuid(table)
        self.enable_cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID", 1)

    def get_cpuid(self, nent: int = 256):
        """KVM_GET_CPUID2 (api.rst KVM_GET_CPUID2)."""
        buf = S.cpuid2_type(nent)()
        buf.nent = nent
        self.ioctl("KVM_GET_CPUID2", buf, args=f"nent={nent}")
        return [buf.entries[i] for i in range(buf.nent)]

    # --- events, debug, translation ----------------------------------------------------------------

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT (api.rst 4.16): queue an external interrupt (user-space irqchip only)."""
        self.ioctl("KVM_INTERRUPT", S.kvm_interrupt(vector), args=f"irq={vector}")

    def try_interrupt(self, vector: int) -> int:
        return self.try_ioctl("KVM_INTERRUPT", S.kvm_interrupt(vector), args=f"irq={vector}")

    def nmi(self) -> None:
        self.ioctl("KVM_NMI")

    def set_guest_debug(self, control: int, debugreg=(0,) * 8) -> None:
        """KVM_SET_GUEST_DEBUG (api.rst 4.87)."""
        dbg = S.kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg):
            dbg.arch.debugreg[i] = value
        self.ioctl("KVM_SET_GUEST_DEBUG", dbg, args=f"control={control:#x}")

    def translate(self, gva: int) -> S.kvm_translation:
        """KVM_TRANSLATE (api.rst 4.15)."""
        tr = S.kvm_translation(linear_address=gva)
        self.ioctl("KVM_TRANSLATE", tr, args=f"gva={gva:#x}")
        return tr

    def enable_cap(self, cap, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the vCPU (api.rst 4.37, section 6)."""
        self.ioctl("KVM_ENABLE_CAP", self.vm.enable_cap_struct(cap, *args, flags=flags),
                   args=self.vm._cap_args(cap, args, flags))

    def stats(self):
        """KVM_GET_STATS_FD on the vCPU (api.rst 4.133)."""
        from .stats import Stats

        return Stats(self.ioctl("KVM_GET_STATS_FD"), f"{self.name}/stats")


def cpuid2_struct(entries):
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
