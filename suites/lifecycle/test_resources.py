"""Objects own their fds and mappings: nothing is left behind, whatever happens to a test.

api.rst 4.2 and 4.7: a VM and a vCPU are file descriptors; closing them (and unmapping
kvm_run, api.rst 5) releases them. kvmtest must do that for every object it creates.
"""

import inspect
import os
import sys
import threading
import time

import pytest

import kvmtest.vcpu
from kvmtest.errors import ClosedError, GuestMemoryError, GuestTimeout, KvmError, UnknownModeError
from kvmtest.exits import IntrExit, IoExit


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_vm_lifecycles_leave_no_fd_and_no_mapping(kvm, guest):
    """Fifty VMs with memory, vCPUs and a run each, closed by `with`: the fd count and the
    mapping count end where they started (api.rst 4.2, 4.7)."""
    guest("long64", "GUEST_DONE").close()  # warm caches (assembler, CPUID) before counting
    fds, maps = _fds(), _maps()
    for _ in range(50):
        with kvm.create_vm() as vm:
            vm.add_memory(0, 0x200000)
            vm.add_memory(0x400000, 0x10000)
            vm.create_vcpu()
            vm.create_vcpu()
    for _ in range(10):
        g = guest("long64", "GUEST_DONE")
        g.run_to_done()
        g.close()
    assert (_fds(), _maps()) == (fds, maps), f"fds {fds} -> {_fds()}, mappings {maps} -> {_maps()}"


def test_a_failing_test_leaves_nothing_behind(kvm):
    """An exception inside `with` still closes the VM and its vCPUs."""
    fds = _fds()
    with pytest.raises(KvmError):
        with kvm.create_vm() as vm:
            vm.add_memory(0, 0x200000)
            vm.create_vcpu(0)
            vm.create_vcpu(0)  # duplicate id: EEXIST
    assert _fds() == fds


def test_closed_objects_refuse_use(kvm):
    """A VM is its fd (api.rst 4.2); after close() a VM method is ClosedError naming the VM,
    not EBADF or an ioctl on whatever file reused the fd number."""
    vm = kvm.create_vm()
    vm.close()
    with pytest.raises(ClosedError, match="vm[0-9]+ is closed"):
        vm.create_vcpu()


def test_overlapping_memslot_error_names_ioctl_object_and_overlap(vm):
    """KVM_SET_USER_MEMORY_REGION with a range overlapping another slot fails with EEXIST
    (api.rst 4.35); the error names the ioctl, the VM, the arguments and the overlap."""
    vm.add_memory(0, 0x200000, slot=0)
    with pytest.raises(KvmError) as info:
        vm.add_memory(0x100000, 0x200000, slot=1)
    assert info.value.errno_name == "EEXIST"
    assert str(info.value).startswith(f"KVM_SET_USER_MEMORY_REGION on {vm.name}: EEXIST (17) slot=1 gpa=0x100000 "
                                      "size=0x200000 (overlaps slot 0 at 0x0-0x200000)")


def test_unaligned_memslot_error_says_what_is_unaligned(vm):
    """An unaligned guest physical address is EINVAL (api.rst 4.35: addresses and size
    must be page aligned)."""
    from kvmtest.memory import HostMapping

    mapping = HostMapping(0x2000)
    try:
        with pytest.raises(KvmError, match=r"EINVAL \(22\) slot=3 gpa=0x1001 size=0x1000 \(gpa not page-aligned\)"):
            vm.set_user_memory_region(3, 0, 0x1001, 0x1000, mapping.addr)
    finally:
        mapping.close()


def test_guest_address_outside_every_slot(vm_with_memory):
    """A guest physical address no memslot covers (api.rst 4.35) is a GuestMemoryError naming the
    address, the VM and its slots, not an IndexError or a fault from outside every mapping."""
    with pytest.raises(GuestMemoryError, match=r"guest address 0x300000 is outside every memslot of vm[0-9]+ "
                                               r"\(slots: 0:0x0-0x200000\)"):
        vm_with_memory.read(0x300000, 4)


def test_unknown_mode_lists_the_modes(guest):
    """A CPU mode kvmtest does not define is UnknownModeError naming it and listing the defined
    modes, raised before any guest is built."""
    with pytest.raises(UnknownModeError, match="unknown CPU mode 'long128'; kvmtest defines: real, pm16"):
        guest("long128", "nop")


@pytest.mark.guest_timeout(0.3)
def test_a_spinning_guest_times_out_naming_mode_and_rip(guest):
    """A guest that never exits is kicked (immediate_exit and a signal, api.rst 5) and the
    test fails with the mode and the RIP instead of hanging."""
    g = guest("long64", "spin: jmp spin")
    start = time.monotonic()
    with pytest.raises(GuestTimeout, match=r"guest still running after 0.3s in long64 at RIP 0x8000"):
        g.run()
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 5, f"GuestTimeout after {elapsed:.3f} s, expected the 0.3 s timeout (and under 5 s)"


def test_a_guest_in_another_thread_is_kicked_too(guest):
    """The watchdog kicks a vCPU whichever thread runs it."""
    g = guest("real", "spin: jmp spin", timeout=0.3)
    errors = []

    def body():
        try:
            g.run()
        except GuestTimeout as e:
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the vCPU thread did not return"
    assert errors and "in real at RIP 0x8000" in str(errors[0])


def test_kick_returns_eintr_as_an_intr_exit(guest):
    """KVM_RUN with kvm_run.immediate_exit set returns -EINTR at once (api.rst 5,
    "immediate_exit"); the run loop reports it as KVM_EXIT_INTR, not as an error."""
    g = guest("long64", "spin: jmp spin")
    g.vcpu.kvm_run.immediate_exit = 1
    exit_ = g.vcpu.run()
    assert isinstance(exit_, IntrExit), f"expected KVM_EXIT_INTR from immediate_exit, got {exit_}"
    assert g.vcpu.kvm_run.immediate_exit == 0


@pytest.mark.waits  # waits 0.1 s for a run the fixed order never lets begin
def test_a_late_watchdog_kick_never_ends_the_next_run(guest, monkeypatch):
    """The watchdog's kick (immediate_exit and a signal, api.rst 5 "immediate_exit"; 4.10 KVM_RUN
    returns -EINTR while an unmasked signal is pending) belongs to the KVM_RUN it timed out. When
    that run ends on its own just as the watchdog decides to kick it, and the watchdog's thread is
    slow to send the signal, the caller's next KVM_RUN must not begin before the signal is sent:
    else the signal lands in it and ends it with EINTR, an IntrExit the guest never caused."""
    g = guest("real", "again: out 0x10, al\n jmp again")
    vcpu = g.vcpu
    first = vcpu.run()
    assert isinstance(first, IoExit) and first.port == 0x10, f"expected OUT to port 0x10, got {first}"
    enter_kvm_run, send_kick = vcpu._enter_kvm_run, kvmtest.vcpu.send_kick
    in_flight, decided, next_began = threading.Event(), threading.Event(), threading.Event()
    runs_at_kick: list[int] = []
    entries = []

    def enter():
        entries.append(vcpu.exits)
        if len(entries) > 1:
            next_began.set()
            return enter_kvm_run()
        done = enter_kvm_run()  # the run ends on its own, but is still in flight to the watchdog
        in_flight.set()
        decided.wait(5)
        return done

    def late_kick(thread_id):
        decided.set()
        next_began.wait(0.1)  # a watchdog thread that lost the CPU, or the GIL, for a while
        runs_at_kick.append(vcpu.exits)
        send_kick(thread_id)

    monkeypatch.setattr(vcpu, "_enter_kvm_run", enter)
    monkeypatch.setattr(kvmtest.vcpu, "send_kick", late_kick)
    run_thread = threading.get_ident()
    timed_out = threading.Thread(target=lambda: in_flight.wait(5) and vcpu._expire(vcpu.exits, run_thread))
    timed_out.start()
    try:
        kept = vcpu.run()  # the exit that came as the watchdog kicked is kept
        after = vcpu.run()
    finally:
        timed_out.join(10)
    assert isinstance(kept, IoExit), f"the run that ended as it was kicked: expected its OUT exit, got {kept}"
    assert runs_at_kick == [entries[0]], (f"the kick for KVM_RUN #{entries[0]} was sent while KVM_RUN "
                                          f"#{runs_at_kick[0] if runs_at_kick else '?'} was the current one")
    assert isinstance(after, IoExit) and after.port == 0x10, \
        f"the next KVM_RUN: expected the guest's OUT to port 0x10, got {after}"


@pytest.mark.waits  # the held watchdog waits 0.1 s for a return the lock never lets come
def test_a_kick_decided_as_the_run_ends_is_undone_by_that_run(guest, monkeypatch):
    """The watchdog decides to kick a KVM_RUN it sees in flight, and that run ends on its own while it
    does: the kick (immediate_exit, api.rst 5) must be seen and undone by that run, or be no kick at
    all. Else immediate_exit stays set and the caller's next KVM_RUN returns -EINTR at once (api.rst
    5 "immediate_exit"), an IntrExit the guest never caused. The watchdog is held, by a trace
    function, just after it found the run in flight and before it marks it kicked, until the run has
    returned (or 0.1 s have passed)."""
    g = guest("real", "again: out 0x10, al\n jmp again")
    vcpu = g.vcpu
    assert isinstance(vcpu.run(), IoExit)
    lines, start = inspect.getsourcelines(kvmtest.vcpu.Vcpu._expire)
    mark = next((start + i for i, line in enumerate(lines) if "self._timed_out = True" in line), None)
    assert mark is not None, "Vcpu._expire no longer marks a run kicked with `self._timed_out = True`"
    checked, returned = threading.Event(), threading.Event()

    def hold(frame, event, arg):
        if event == "line" and frame.f_lineno == mark:
            checked.set()
            returned.wait(0.1)
        return hold

    def watchdog_thread(generation, thread_id):
        sys.settrace(lambda frame, event, arg: hold if frame.f_code is kvmtest.vcpu.Vcpu._expire.__code__ else None)
        try:
            vcpu._expire(generation, thread_id)
        finally:
            sys.settrace(None)

    enter_kvm_run, run_thread = vcpu._enter_kvm_run, threading.get_ident()
    threads = []

    def enter():
        monkeypatch.setattr(vcpu, "_enter_kvm_run", enter_kvm_run)  # once
        done = enter_kvm_run()  # the run is over, but still in flight to the watchdog
        t = threading.Thread(target=watchdog_thread, args=(vcpu.exits, run_thread))
        threads.append(t)
        t.start()
        assert checked.wait(5), "the watchdog never found the run in flight"
        return done

    monkeypatch.setattr(vcpu, "_enter_kvm_run", enter)
    try:
        kept = vcpu.run()
        returned.set()
        after = vcpu.run()
    finally:
        returned.set()
        for t in threads:
            t.join(10)
    assert isinstance(kept, IoExit), f"the run that ended as it was kicked: expected its OUT exit, got {kept}"
    assert isinstance(after, IoExit) and after.port == 0x10, \
        f"the next KVM_RUN: expected the guest's OUT to port 0x10, got {after} (immediate_exit left at " \
        f"{vcpu.kvm_run.immediate_exit})"
