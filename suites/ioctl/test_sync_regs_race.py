"""kvm_run.s.regs rewritten by another thread while KVM_RUN imports it (KVM_CAP_SYNC_REGS;
api.rst 5 "kvm_dirty_regs"; selftests sync_regs_test race_cr4, race_exc, race_inj_pen).

KVM must treat the sync area as one snapshot of user memory: whatever a racing writer leaves
there, an import is either refused (EINVAL, as KVM_SET_SREGS / KVM_SET_VCPU_EVENTS refuse the
same values) or applied whole, and the vCPU never ends up in a state those ioctls would refuse.
"""

import errno
import threading
import time

import pytest

from kvmtest import state
from kvmtest.abi import constants as C
from kvmtest.abi.constants import errno_name
from kvmtest.exits import IntrExit, IoExit
from kvmtest.x86 import CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, NMI_VECTOR, UD_VECTOR

pytestmark = pytest.mark.requires_cap("KVM_CAP_SYNC_REGS")

RACE_SECONDS = 1.0
COUNTER_LOOP = "top:\nout 0x10, al\nadd rbx, 1\njmp top"  # one KVM_EXIT_IO per pass


def _race_cr4(run, stop):
    """Flip CR4.PAE in s.regs.sregs of a long-mode vCPU: EFER.LME with CR4.PAE clear is a state
    KVM_SET_SREGS refuses (SDM Vol. 3A 10.8.5: IA-32e mode needs PAE)."""
    cr4 = run.s.regs.sregs.cr4
    while not stop.is_set():
        run.kvm_dirty_regs = C.KVM_SYNC_X86_SREGS
        run.s.regs.sregs.cr4 = cr4 | CR4_PAE
        run.s.regs.sregs.cr4 = cr4 & ~CR4_PAE


def _race_vector(run, stop):
    """Make #UD pending, then change its vector to 255, which is no exception (SDM Vol. 3A 6.3.1:
    vectors 0-31 are exceptions)."""
    events = run.s.regs.events
    while not stop.is_set():
        run.kvm_dirty_regs = C.KVM_SYNC_X86_EVENTS
        events.flags = 0
        events.exception.nr = UD_VECTOR
        events.exception.pending = 1
        events.exception.nr = 255


def _race_pending_and_injected(run, stop):
    """Mark a #UD both pending and injected: without KVM_VCPUEVENT_VALID_PAYLOAD user space has
    no pending exceptions (api.rst KVM_SET_VCPU_EVENTS), so KVM must take it as injected alone."""
    events = run.s.regs.events
    events.exception.nr = UD_VECTOR
    while not stop.is_set():
        run.kvm_dirty_regs = C.KVM_SYNC_X86_EVENTS
        events.flags = 0
        events.exception.injected = 1
        events.exception.pending = 1


RACERS = {"cr4-pae": _race_cr4, "exception-vector-255": _race_vector,
          "exception-pending-and-injected": _race_pending_and_injected}


def _invalid_state(vcpu) -> str | None:
    """What in the vCPU's state KVM_SET_SREGS / KVM_SET_VCPU_EVENTS would refuse, or None."""
    sregs = vcpu.get_sregs()
    if sregs.efer & EFER_LME and sregs.cr0 & CR0_PG and not sregs.cr4 & CR4_PAE:
        return f"KVM_GET_SREGS: EFER {sregs.efer:#x} (LME) and CR0 {sregs.cr0:#x} (PG) with CR4 {sregs.cr4:#x} (no PAE)"
    exc = vcpu.get_events().exception
    if (exc.injected or exc.pending) and (exc.nr > 31 or exc.nr == NMI_VECTOR):
        return f"KVM_GET_VCPU_EVENTS: exception vector {exc.nr} (injected={exc.injected} pending={exc.pending})"
    if exc.injected and exc.pending:
        return f"KVM_GET_VCPU_EVENTS: exception {exc.nr} both injected and pending without the payload capability"
    return None


def _complete_pending_exit(vcpu):
    """KVM_RUN with immediate_exit: an exit's operation (the OUT at a KVM_EXIT_IO) is complete, and
    the guest state consistent, only once KVM_RUN is re-entered (api.rst 5, the note on KVM_EXIT_IO),
    so a state saved or restored before that would depend on KVM's unfinished completion."""
    vcpu.kvm_run.immediate_exit = 1
    try:
        exit_ = vcpu.run()
    finally:
        vcpu.kvm_run.immediate_exit = 0
    assert isinstance(exit_, IntrExit), f"KVM_RUN with immediate_exit: expected KVM_EXIT_INTR, got {exit_}"


@pytest.mark.parametrize("racer", sorted(RACERS))
def test_sync_area_rewritten_during_kvm_run_is_refused_or_applied_whole(guest, racer):
    """While a second thread keeps rewriting s.regs with an invalid value and sets its
    kvm_dirty_regs bit, every KVM_RUN either fails with EINVAL or runs, and after each one the
    vCPU's state (read through KVM_GET_SREGS and KVM_GET_VCPU_EVENTS) is one those ioctls' setters
    accept; KVM_TRANSLATE works throughout the CR4 race; and once the writer stops, the vCPU restored to its
    saved state runs the guest on (api.rst 5 "kvm_dirty_regs"; SDM Vol. 3A 10.8.5, 6.3.1).
    A guest that took the injected #UD, halted or shut down is put back to the saved state."""
    g = guest("long64", COUNTER_LOOP)
    vcpu, run = g.vcpu, g.vcpu.kvm_run
    run.kvm_valid_regs = C.KVM_SYNC_X86_VALID_FIELDS
    g.expect_exit(IoExit, port=0x10)
    run.kvm_valid_regs = 0
    assert run.s.regs.sregs.efer & EFER_LMA and run.s.regs.sregs.cr4 & CR4_PAE, "the guest is not in long mode"
    _complete_pending_exit(vcpu)
    saved = state.save(vcpu)
    stop = threading.Event()
    writer = threading.Thread(target=RACERS[racer], args=(run, stop), daemon=True)
    errors: dict[str, int] = {}
    runs = 0
    writer.start()
    try:
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            err = vcpu.try_run()
            runs += 1
            if err:
                errors[errno_name(err)] = errors.get(errno_name(err), 0) + 1
                assert err == errno.EINVAL, \
                    f"KVM_RUN with a racing s.regs writer ({racer}) failed with {errno_name(err)}; expected 0 or EINVAL"
            bad = _invalid_state(vcpu)
            assert bad is None, f"after KVM_RUN number {runs} with a racing writer ({racer}): {bad}"
            if racer == "cr4-pae":
                vcpu.translate(0)  # KvmError if KVM's MMU choked on the state
            exit_ = vcpu.last_exit() if not err else None
            if not (isinstance(exit_, IoExit) and exit_.port == 0x10) and not err:
                state.restore(vcpu, saved)  # took the #UD, halted or shut down: start again
    finally:
        stop.set()
        writer.join(5)
    run.kvm_dirty_regs = 0
    if isinstance(vcpu.last_exit(), IoExit):
        _complete_pending_exit(vcpu)
    state.restore(vcpu, saved)
    before = vcpu.get_regs().rbx
    for _ in range(3):
        g.expect_exit(IoExit, port=0x10)
    assert vcpu.get_regs().rbx == before + 3, \
        f"after the race ({runs} KVM_RUNs, errors {errors}) the restored guest counted RBX {before:#x} -> " \
        f"{vcpu.get_regs().rbx:#x} over three passes; expected +3"
