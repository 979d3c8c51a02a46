"""Running a guest: KVM_RUN until an event the test should see, answering the host half of the
guest/host protocol (kvmtest.guest.protocol) on the way.

GuestRunLoop is a base of kvmtest.guest.builder.Guest; it reads the attributes the builder sets,
listed on the class. A protocol exit is an OUT to a protocol port (CPL0) or a one-byte write to
layout.PROTOCOL_MMIO (CPL3); the host finds the GUEST_* site by the exit's RIP and:
  GUEST_PRINT, a passing GUEST_ASSERT_EQ or exception check   resumes the guest
  GUEST_SYNC, GUEST_DONE                                       returns protocol.Sync / protocol.Done
  GUEST_FAIL, a failing assertion or check, an unexpected exception   raises GuestFailure,
                                                               with that vCPU's registers
Every other exit goes to the test as a typed kvmtest.exits.Exit.
"""

import threading

from .. import ioctl as _ioctl
from .. import validate
from ..abi.structs import kvm_sregs
from ..errors import GuestFailure, GuestTimeout
from ..exits import Exit, IoExit, MmioExit
from ..x86 import CR0_PG, CR4_PAE, EFER_LMA, vector_name
from . import exc_records
from . import layout as L
from . import protocol as P
from .diagnostics import GuestDiagnostics, fmt_value
from .modes import keep_tr_loadable
from .paging import PageTables

DEFAULT_MAX_EXITS = 100_000


class GuestRunLoop(GuestDiagnostics):
    """run(), run_to_done(), expect_sync(), expect_exit(), in_thread(), set_sregs() for a vCPU about
    to run, and the host's answers to the guest's protocol exits."""

    # Set by the builder (kvmtest.guest.builder.Guest), besides GuestDiagnostics's:
    max_exits: int                      # exits (and GUEST_SYNCs) one call may see before it fails
    page_tables: PageTables | None
    symbols: dict[str, int]             # the assembled guest's symbols, for protocol operands
    syncs: list[int]                    # every GUEST_SYNC value, in order
    output: list[str]                   # every GUEST_PRINT text, in order
    _site_at: dict[int, P.Site]         # guest address -> protocol site (at and after its access)

    # --- running -------------------------------------------------------------------------------

    def run(self, timeout: float | None = None, vcpu=None):
        """Run until the next event the test should see: a Sync, Done, or any non-protocol Exit.

        Prints, passing assertions and passing exception checks are handled here; a failed
        one, or an unexpected exception in the guest, raises GuestFailure. `vcpu` picks one
        of the guest's vCPUs (default: the first). `timeout`: seconds per KVM_RUN (default: the
        vCPU's). More than max_exits protocol exits without an event raise GuestFailure.
        """
        vcpu = self._own_vcpu(vcpu)
        self._reload_pdptes()
        for _ in range(self.max_exits):
            try:
                exit_ = vcpu.run(timeout)
            except GuestTimeout as e:
                raise GuestTimeout(f"{self.name} ({self.mode.name}): {e}\n{self._trace()}") from None
            port = _protocol_port(exit_)
            if port is not None:
                event = self._protocol(port, vcpu)
                if event is not None:
                    return event
                continue
            return exit_
        raise GuestFailure(f"{self.name} ({self.mode.name}): more than {self.max_exits} exits without an event")

    def _reload_pdptes(self) -> None:
        """After the host changed a PAE PDPTE, load CR3 again on every vCPU in PAE paging (KVM_SET_SREGS
        with the same CR3 reloads the PDPTE registers, SDM Vol. 3A 4.4.1), as an OS does with MOV CR3."""
        pt = self.page_tables
        if pt is None or not pt.pdptes_changed:
            return
        for vcpu in self.vm.vcpus:
            if vcpu.closed:
                continue
            sregs = vcpu.get_sregs()
            if sregs.cr0 & CR0_PG and sregs.cr4 & CR4_PAE and not sregs.efer & EFER_LMA:
                self.set_sregs(sregs, vcpu)
        pt.pdptes_changed = False

    def set_sregs(self, sregs: kvm_sregs, vcpu=None) -> None:
        """KVM_SET_SREGS (api.rst 4.14) for one of this guest's vCPUs (default: the first) that is
        to run on: `sregs` exactly, except that under QEMU's TCG a busy TR goes in with the available
        type (kvmtest.guest.modes.keep_tr_loadable): TCG aborts the whole VM when the guest then
        faults, and a read-modify-write would bring the busy type back, as KVM_GET_SREGS on SVM
        always reports it. `sregs` itself stays as the caller wrote it. A check of KVM_SET_SREGS
        itself, which must send exactly the state it tests, calls Vcpu.set_sregs instead."""
        vcpu = self._own_vcpu(vcpu)
        sregs = validate.instance(sregs, kvm_sregs, f"{self.name} set_sregs")
        vcpu.set_sregs(keep_tr_loadable(kvm_sregs.from_buffer_copy(sregs)))

    def run_to_done(self, timeout: float | None = None, vcpu=None) -> list[int]:
        """Run to GUEST_DONE; returns the GUEST_SYNC values seen. Any other exit fails the test,
        and so do more than max_exits GUEST_SYNCs (a guest syncing in a loop would never end)."""
        values: list[int] = []
        while True:
            if len(values) >= self.max_exits:
                raise self.failure(f"more than {self.max_exits} GUEST_SYNC events without GUEST_DONE "
                                   f"(last values {values[-3:]})", vcpu=vcpu)
            event = self.run(timeout, vcpu)
            if isinstance(event, P.Done):
                return values
            if isinstance(event, P.Sync):
                values.append(event.value)
                continue
            raise self.failure(f"expected GUEST_DONE, got {event}", vcpu=vcpu)

    def expect_sync(self, timeout: float | None = None, vcpu=None) -> int:
        """Run to the next event, which must be a GUEST_SYNC; returns its value."""
        event = self.run(timeout, vcpu)
        if not isinstance(event, P.Sync):
            raise self.failure(f"expected GUEST_SYNC, got {event}", vcpu=vcpu)
        return event.value

    def expect_exit(self, exit_type, timeout: float | None = None, **fields) -> Exit:
        """Run the first vCPU to the next event and assert it is `exit_type` (an Exit class) with
        the given field values (e.g. port=0x10, size=1)."""
        event = self.run(timeout)
        if not isinstance(event, exit_type):
            raise self.failure(f"expected {exit_type.__name__}, got {event}")
        wrong = {k: (v, getattr(event, k)) for k, v in fields.items() if getattr(event, k) != v}
        if wrong:
            detail = ", ".join(f"{k}: expected {fmt_value(v)}, got {fmt_value(got)}" for k, (v, got) in wrong.items())
            raise self.failure(f"{event}: {detail}")
        return event

    def in_thread(self, vcpu=None, *, until_done: bool = True, timeout: float | None = None) -> "VcpuThread":
        """Run a vCPU on its own thread (run_to_done, or a single run() when until_done is False);
        `.join()` returns what it returned or raises what it raised."""
        target = self.run_to_done if until_done else self.run
        if timeout is not None:  # here, not in the thread, so the caller sees the error at once
            timeout = validate.timeout(timeout, f"Guest {self.name!r} in_thread timeout")
        return VcpuThread(lambda: target(timeout, vcpu))

    # --- the host half of the protocol ------------------------------------------------------------

    def _protocol(self, port: int, vcpu):
        """Answer the protocol exit on `port` of `vcpu`: an event for the test, None to resume, or
        GuestFailure with `vcpu`'s registers as the exit left them."""
        regs = vcpu.get_regs()
        if port == P.PORT_EXCEPTION:
            raise self.failure(
                f"unexpected {vector_name(regs.rbx & 0xFF)} (vector {regs.rbx & 0xFF}) in the guest on {vcpu.name}: "
                f"error code {regs.rcx:#x}, RIP {regs.rdx:#x}, CR2 {regs.rsi:#x}", regs, vcpu)
        site = self._site_at.get(regs.rip)
        if site is None:  # code running with a nonzero CS base (an AP started by SIPI, say)
            site = self._site_at.get(regs.rip + vcpu.get_sregs().cs.base)
        if site is None or site.port != port:
            raise self.failure(f"protocol access for port {port:#x} at RIP {regs.rip:#x} matches no GUEST_* site",
                               regs, vcpu)
        _ioctl.note(vcpu.name, "guest", site.kind, site.origin)
        if site.kind == "done":
            return P.Done(site)
        if site.kind == "sync":
            value = self._eval(site, site.operands[0], regs, vcpu)
            self.syncs.append(value)
            return P.Sync(value, site)
        if site.kind == "print":
            self.output.append(site.operands[0])
            return None
        if site.kind == "fail":
            raise self.failure(f"GUEST_FAIL at {site.origin}: {site.operands[0]}", regs, vcpu)
        if site.kind == "assert_eq":
            # both operands are taken modulo the width of the registers compared (compose)
            a, b = (self._eval(site, op, regs, vcpu) for op in site.operands)
            if a != b:
                raise self.failure(f"guest assertion failed at {site.origin}: `{site.text}`: {site.operands[0]} = "
                                   f"{fmt_value(a)}, expected {site.operands[1]} = {fmt_value(b)}", regs, vcpu)
            return None
        if site.kind == "check_exception":
            return self._check_exception(site, regs, vcpu)
        raise self.failure(f"unknown protocol site kind {site.kind}", regs, vcpu)

    def _check_exception(self, site: P.Site, regs, vcpu) -> None:
        """GUEST_ASSERT_RAISES: the exception `vcpu`'s own record holds since the site armed it
        must be the expected vector (and error code); the record is disarmed for the next."""
        vector, code = site.operands
        got, error_code = exc_records.take_check(self.vm, self._record_index(vcpu))
        if got == exc_records.NO_VECTOR:
            raise self.failure(f"at {site.origin}: expected {vector_name(vector)}, but no exception was raised "
                               f"(`{site.text}`)", regs, vcpu)
        if got != vector:
            raise self.failure(f"at {site.origin}: expected {vector_name(vector)}, got {vector_name(got)} "
                               f"(error code {error_code:#x}) (`{site.text}`)", regs, vcpu)
        if code is not None:
            want = self._eval(site, code, regs, vcpu)
            if error_code != want:
                raise self.failure(f"at {site.origin}: {vector_name(vector)} error code: expected {want:#x}, "
                                   f"got {error_code:#x} (`{site.text}`)", regs, vcpu)

    def _eval(self, site: P.Site, value: P.Value, regs, vcpu) -> int:
        """A protocol Value (checked when the guest was assembled) from `vcpu`'s registers."""
        try:
            return value.evaluate(regs, vcpu.get_sregs() if value.needs_sregs else None, self.symbols)
        except P.OperandError as e:
            raise self.failure(f"at {site.origin}: `{site.text}`: {e}", regs, vcpu) from None


class VcpuThread:
    """A vCPU's run loop on a thread; join() hands back its result or re-raises its error."""

    def __init__(self, body):
        self._result, self._error = None, None

        def run():
            try:
                self._result = body()
            except BaseException as e:  # noqa: BLE001 -- re-raised in the joining thread
                self._error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        """Whether the vCPU's loop is still running."""
        return self.thread.is_alive()

    def join(self, timeout: float = 60):
        """Wait up to `timeout` seconds; the loop's result, or its exception re-raised here.
        GuestTimeout when it is still running then."""
        timeout = validate.timeout(timeout, "VcpuThread.join timeout")
        self.thread.join(min(timeout, threading.TIMEOUT_MAX))  # a huge timeout is fine, not an OverflowError
        if self.thread.is_alive():
            raise GuestTimeout(f"vCPU thread still running after {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._result


def _protocol_port(exit_) -> int | None:
    """The protocol command an exit carries, or None for an exit the test should see."""
    if isinstance(exit_, IoExit):
        return exit_.port if exit_.is_out and exit_.port in P.PROTOCOL_PORTS else None
    if isinstance(exit_, MmioExit) and exit_.is_write and exit_.len == 1:
        offset = exit_.phys_addr - L.PROTOCOL_MMIO
        if 0 <= offset < len(P.PROTOCOL_PORTS):
            return P.PORT_DONE + offset
    return None
