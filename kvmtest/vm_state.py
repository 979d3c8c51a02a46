"""Complete VM state: save a stopped VM, rebuild it as a fresh VM, and prove the copy.

Saved, besides each vCPU's state (kvmtest.state): the setup calls KVM has no KVM_GET_* for,
replayed in their order, so that what was undone later (a deassigned eventfd, an unregistered
zone, a replaced MSR filter) is undone again (capabilities, irqchip or split irqchip, PIT, GSI
routes, MSR filter, irqfds, ioeventfds, coalesced MMIO; Vm.setup_calls, kvmtest.carried); every
memslot as KVM holds it (however it was set) with its bytes and the pages dirty-logged since they
were last reported, slots that share host memory sharing one new mapping, so they still alias;
coalesced MMIO entries nobody drained (Vm.carried_coalesced); the in-kernel PIC master and slave
and IOAPIC (KVM_GET_IRQCHIP, api.rst 4.26); the PIT (KVM_GET_PIT2); kvmclock (KVM_GET_CLOCK).

Refused, naming what (kvmtest.state.CannotCarry): a vCPU inside KVM_RUN on another thread; a vCPU
stopped at an IN, MMIO read, RDMSR or hypercall exit that respond() has not answered
(ExitAwaitsResponse: KVM completes it only on the next KVM_RUN, api.rst 5); a dirty ring; any
ioctl on the VM or a vCPU that nothing records or reads back (kvmtest.carried).

Rebuild order, and why:
 1. the setup calls, before any vCPU: KVM_CREATE_IRQCHIP gives only vCPUs created after it a
    local APIC (api.rst 4.24), KVM_CAP_SPLIT_IRQCHIP and the dirty ring must precede vCPUs, and
    KVM_CREATE_PIT2 needs the irqchip (api.rst KVM_CREATE_PIT2);
 2. memslots, with their flags, bytes and carried dirty pages;
 3. the vCPUs, each restored by kvmtest.state.restore except its TSC offset;
 4. KVM_SET_IRQCHIP for the PICs and the IOAPIC after the local APICs: KVM delivers what the
    restored IOAPIC holds pending to the LAPICs (ioapic.c, kvm_set_ioapic), which must already
    hold their restored state or KVM_SET_LAPIC would wipe the delivery;
 5. KVM_SET_PIT2;
 6. KVM_SET_CLOCK, then each vCPU's TSC offset (devices/vcpu.rst, migrating the TSC).
"""

import time
from dataclasses import dataclass, field

from . import state as vcpu_state
from . import state_verify
from .abi import constants as C
from .abi import structs as S
from .exits import HypercallExit, IoExit, MmioExit, MsrExit
from .memory import HostMapping
from .state import CannotCarry, ExitAwaitsResponse
from .x86 import (
    MSR_KVM_ASYNC_PF_EN,
    MSR_KVM_PV_EOI_EN,
    MSR_KVM_STEAL_TIME,
    MSR_KVM_SYSTEM_TIME,
    MSR_KVM_SYSTEM_TIME_NEW,
    MSR_KVM_WALL_CLOCK,
    MSR_KVM_WALL_CLOCK_NEW,
)

# Exits whose operation KVM finishes only on the next KVM_RUN (api.rst 5, "immediate_exit"):
# user space must re-enter before saving, or the operation is lost.
_INCOMPLETE_EXITS = {C.KVM_EXIT_IO, C.KVM_EXIT_MMIO, C.KVM_EXIT_X86_RDMSR, C.KVM_EXIT_X86_WRMSR,
                     C.KVM_EXIT_HYPERCALL}


@dataclass
class MemslotState:
    """One memslot as saved: its place and KVM_MEM_* flags, its bytes, the pages dirty-logged and
    not yet reported (relative to the slot), and where it lies in the saved host memory."""

    slot: int
    gpa: int
    size: int
    flags: int
    data: bytes
    dirty: set[int] = field(default_factory=set)
    backing: int = 0    # index of its host memory in VmState.backing_sizes (shared by aliasing slots)
    offset: int = 0     # where in that memory the slot starts

    @property
    def end(self) -> int:
        """The first guest physical address past the slot."""
        return self.gpa + self.size


@dataclass
class VmState:
    """Everything save_vm() read from a VM: the recorded setup calls, the memslots, each vCPU's
    kvmtest.state.VcpuState, the in-kernel PICs, IOAPIC and PIT, kvmclock, undrained coalesced
    MMIO entries, and the host memory sizes behind the slots."""

    setup_calls: list
    memslots: list[MemslotState]
    vcpus: list[vcpu_state.VcpuState]
    irqchip: bool = False
    split_irqchip: bool = False
    pic_master: S.kvm_irqchip | None = None
    pic_slave: S.kvm_irqchip | None = None
    ioapic: S.kvm_irqchip | None = None
    pit: S.kvm_pit_state2 | None = None
    clock: S.kvm_clock_data | None = None
    saved_at_ns: int = 0
    vcpu_timeouts: list[float] = field(default_factory=list)
    backing_sizes: list[int] = field(default_factory=list)  # host memory behind the memslots, one per mapping
    coalesced: list = field(default_factory=list)       # undrained kvm_coalesced_mmio entries, oldest first


def _awaits_response(exit_) -> bool:
    """Whether KVM finishes `exit_` on the next KVM_RUN with data only user space supplies."""
    return ((isinstance(exit_, IoExit) and exit_.is_in)
            or (isinstance(exit_, (MmioExit, MsrExit)) and not exit_.is_write)
            or isinstance(exit_, HypercallExit))


def check_stopped(vm) -> None:
    """CannotCarry unless every vCPU is out of KVM_RUN with no exit awaiting user space's data."""
    for vcpu in vm.vcpus:
        if vcpu.in_run:
            raise CannotCarry(f"{vcpu.name} is inside KVM_RUN on another thread, so its state is still changing; "
                              "stop it (kick() and join its thread) before saving")
        exit_ = vcpu.last_exit()
        if exit_ is not None and _awaits_response(exit_) and not vcpu.responded:
            raise ExitAwaitsResponse(
                f"{vcpu.name} stopped at {exit_}, which awaits its response: KVM completes it on the next KVM_RUN "
                "with the data user space wrote into kvm_run, and the vCPU's state is not consistent until then "
                "(api.rst 5, KVM_RUN); call respond() on the exit before saving or migrating")


def complete_pending_exits(vm) -> None:
    """Re-enter every vCPU stopped at an I/O, MMIO, MSR or hypercall exit with immediate_exit set:
    KVM finishes the operation (stores an IN's data, ...) and returns EINTR before running any
    guest instruction (api.rst 5, "immediate_exit"; selftests vcpu_run_complete_io). A vCPU with
    registers marked dirty in kvm_run (kvm_dirty_regs) is re-entered too: that KVM_RUN loads them,
    so the save reads them. Call check_stopped first: an exit still awaiting its data would be
    completed with whatever kvm_run holds."""
    for vcpu in vm.vcpus:
        run, last = vcpu.kvm_run, vcpu.last_exit()
        if (last is not None and last.reason in _INCOMPLETE_EXITS) or run.kvm_dirty_regs:
            before = run.immediate_exit
            run.immediate_exit = 1
            exit_ = vcpu.run()
            run.immediate_exit = before
            if exit_.reason != C.KVM_EXIT_INTR:
                raise CannotCarry(f"{vcpu.name}: KVM_RUN with immediate_exit set to complete a pending exit "
                                  f"returned {exit_} instead of KVM_EXIT_INTR (a string I/O instruction needing "
                                  "another exit?); run the vCPU on before saving it")


def _save_memslots(vm) -> tuple[list[MemslotState], list[int]]:
    """Every memslot with its bytes, and the host memory behind them: slots whose host memory
    overlaps (slots on one mapping, a raw slot inside another's memory) share one backing, so
    that the copy's slots alias each other as the original's do."""
    def extent(m):
        if isinstance(m.mapping, HostMapping):
            return m.mapping.addr, m.mapping.addr + m.mapping.size
        return m.hva, m.hva + m.size

    groups: list[list] = []  # [start, end, slots], by host address
    for m in sorted(vm.memslots.values(), key=lambda m: extent(m)[0]):
        start, end = extent(m)
        if groups and start < groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], end)
            groups[-1][2].append(m)
        else:
            groups.append([start, end, [m]])
    where = {m.slot: (index, m.hva - start) for index, (start, _, members) in enumerate(groups) for m in members}
    slots = []
    for m in vm.memslots.values():
        dirty = set()
        if m.flags & C.KVM_MEM_LOG_DIRTY_PAGES:
            dirty = vm.get_dirty_log(m.slot)  # includes pages carried in from an earlier copy
            vm.carried_dirty[m.slot] = set(dirty)  # still reported by this VM: saving is not collecting
        backing, offset = where[m.slot]
        slots.append(MemslotState(m.slot, m.gpa, m.size, m.flags, m.mapping.read(m.offset, m.size), dirty,
                                  backing, offset))
    return slots, [end - start for start, end, _ in groups]


def save_vm(vm) -> VmState:
    """Everything of a stopped VM that KVM exposes (see the module docstring)."""
    if vm.dirty_ring_size:
        raise CannotCarry(f"{vm.name}: dirty-ring entries the test has not harvested cannot be carried to a new "
                          "VM (there is no ioctl to put them into a ring); save a VM without a dirty ring")
    if vm.uncarried:
        raise CannotCarry(f"{vm.name} was set up through ioctls kvmtest neither records nor reads back, so a copy "
                          f"would lack them: {'; '.join(vm.uncarried)} (kvmtest.carried)")
    check_stopped(vm)
    complete_pending_exits(vm)
    started = time.monotonic_ns()
    has = vm.kvm.check_extension
    state = VmState(setup_calls=list(vm.setup_calls), memslots=[], vcpus=[], saved_at_ns=started,
                    irqchip=vm.irqchip, split_irqchip=vm.split_irqchip_routes is not None)
    if has("KVM_CAP_ADJUST_CLOCK"):
        state.clock = vm.get_clock()  # first: the later checks bound the clock by the time since here
    state.memslots, state.backing_sizes = _save_memslots(vm)
    state.vcpus = [vcpu_state.save(v) for v in vm.vcpus]
    state.vcpu_timeouts = [v.timeout for v in vm.vcpus]
    # The coalesced ring is the VM's, mapped in every vCPU; a VM without vCPUs has no writes in it.
    state.coalesced = vm.vcpus[0].peek_coalesced_ring() if vm.vcpus and has("KVM_CAP_COALESCED_MMIO") \
        else list(vm.carried_coalesced)
    if vm.irqchip and not state.split_irqchip:
        state.pic_master = vm.get_irqchip(C.KVM_IRQCHIP_PIC_MASTER)
        state.pic_slave = vm.get_irqchip(C.KVM_IRQCHIP_PIC_SLAVE)
        state.ioapic = vm.get_irqchip(C.KVM_IRQCHIP_IOAPIC)
    if vm.pit_flags is not None:
        state.pit = vm.get_pit2()
    return state


def restore_vm(kvm, state: VmState, *, verify: bool = True):
    """A new Vm holding `state`, built in the order of the module docstring; with `verify`,
    every piece is read back and compared (kvmtest.state.StateMismatch on a difference)."""
    vm = kvm.create_vm()
    mappings = []
    try:
        for name, args, kwargs in state.setup_calls:
            getattr(vm, name)(*args, **kwargs)
        # One new mapping for each old one: slots that aliased each other still do.
        mappings = [HostMapping(size, name=f"{vm.name} memory {i}") for i, size in enumerate(state.backing_sizes)]
        for m in state.memslots:
            mapping = mappings[m.backing]
            mapping.write(m.offset, m.data)
            vm.add_memory(m.gpa, m.size, slot=m.slot, flags=m.flags, mapping=mapping, offset=m.offset)
            if m.dirty:
                vm.carried_dirty[m.slot] = set(m.dirty)
        vm.carried_coalesced = list(state.coalesced)
        timeouts: list[float | None] = list(state.vcpu_timeouts) or [None] * len(state.vcpus)
        for saved, timeout in zip(state.vcpus, timeouts, strict=True):
            vcpu = vm.create_vcpu(saved.vcpu_id)
            if timeout is not None:
                vcpu.timeout = timeout
            vcpu_state.restore(vcpu, saved, tsc_offset=False)
        for chip in (state.pic_master, state.pic_slave, state.ioapic):
            if chip is not None:
                vm.set_irqchip(chip)
        if state.pit is not None:
            vm.set_pit2(state.pit)
        if state.clock is not None:
            vm.set_clock(_clock_to_set(vm, state.clock))
        for vcpu, saved in zip(vm.vcpus, state.vcpus, strict=True):
            vcpu_state.restore_tsc_offset(vcpu, saved)
        if verify:
            verify_vm(vm, state)
    except BaseException:
        vm.close()
        for mapping in mappings:
            mapping.close()
        raise
    return vm


def _clock_to_set(vm, saved: S.kvm_clock_data) -> S.kvm_clock_data:
    clock = S.kvm_clock_data(clock=saved.clock)
    # With KVM_CLOCK_REALTIME, KVM advances kvmclock by the CLOCK_REALTIME time since the save
    # (api.rst KVM_SET_CLOCK); KVM only reports realtime when its clock is TSC-stable.
    if saved.flags & C.KVM_CLOCK_REALTIME:
        clock.flags, clock.realtime = C.KVM_CLOCK_REALTIME, saved.realtime
    return clock


def verify_vm(vm, state: VmState) -> None:
    """Read back the VM-level state and every vCPU's, comparing with `state`."""
    name = vm.name
    kvm_areas = [area for v in state.vcpus for area in kvm_written_areas(v.msrs)]
    for m in state.memslots:
        slot = vm.memslots.get(m.slot)
        if slot is None or (slot.gpa, slot.size, slot.flags) != (m.gpa, m.size, m.flags):
            raise vcpu_state.StateMismatch(name, "KVM_SET_USER_MEMORY_REGION", [
                f"slot {m.slot}: saved gpa={m.gpa:#x} size={m.size:#x} flags={m.flags:#x}, have "
                + (f"gpa={slot.gpa:#x} size={slot.size:#x} flags={slot.flags:#x}" if slot else "none")])
        now = bytearray(slot.mapping.read(slot.offset, m.size))
        for gpa, size, _ in kvm_areas:
            lo, hi = max(gpa, m.gpa), min(gpa + size, m.end)
            if lo < hi:
                now[lo - m.gpa:hi - m.gpa] = m.data[lo - m.gpa:hi - m.gpa]
        state_verify.check(name, f"guest memory of slot {m.slot}",
                           state_verify.bytes_diffs(m.data, bytes(now), f"slot {m.slot}"))
    if len(vm.vcpus) != len(state.vcpus):
        raise vcpu_state.StateMismatch(name, "KVM_CREATE_VCPU", [
            f"vCPUs: saved {len(state.vcpus)}, have {len(vm.vcpus)}"])
    for vcpu, saved in zip(vm.vcpus, state.vcpus, strict=True):
        state_verify.verify(vcpu, saved)
    for chip, struct in ((state.pic_master, S.kvm_pic_state), (state.pic_slave, S.kvm_pic_state),
                         (state.ioapic, S.kvm_ioapic_state)):
        if chip is not None:
            chip_saved = struct.from_buffer_copy(bytes(chip.chip))
            chip_got = struct.from_buffer_copy(bytes(vm.get_irqchip(chip.chip_id).chip))
            if state.pit is not None:
                _allow_pit_ticks(chip.chip_id, chip_saved, chip_got)
            state_verify.check(name, f"KVM_GET_IRQCHIP({C.IRQCHIP_NAMES.name(chip.chip_id)})",
                               state_verify.field_diffs(chip_saved, chip_got))
    if state.pit is not None:
        state_verify.check(name, "KVM_GET_PIT2", _pit_diffs(state.pit, vm.get_pit2()))
    if state.clock is not None:
        state_verify.check(name, "KVM_GET_CLOCK", _clock_diffs(state.clock, state.saved_at_ns, vm.get_clock()))


def _allow_pit_ticks(chip_id, saved, got) -> None:
    """The restored PIT runs from KVM_SET_PIT2 on, and each channel 0 tick raises GSI 0, which
    KVM routes to PIC master pin 0 and IOAPIC pin 2 (arch/x86/kvm/irq_comm.c default routing).
    A tick between the restore and this read-back may set those request bits and nothing else,
    so `got` takes the saved value for exactly those bits."""
    if chip_id == C.KVM_IRQCHIP_PIC_MASTER:
        got.irr = (got.irr & ~1) | (saved.irr & 1)
        got.last_irr = (got.last_irr & ~1) | (saved.last_irr & 1)
    elif chip_id == C.KVM_IRQCHIP_IOAPIC:
        got.irr = (got.irr & ~(1 << 2)) | (saved.irr & (1 << 2))


# Guest memory KVM itself writes, as the paravirtual MSRs that enable it say (x86/msr.rst): such
# bytes may change between the save and the read-back without anything being lost.
_KVM_AREAS = [  # (MSR, enable bit or None for "nonzero", address mask, size)
    (MSR_KVM_SYSTEM_TIME, 1, ~1, 32), (MSR_KVM_SYSTEM_TIME_NEW, 1, ~1, 32),    # pvclock
    (MSR_KVM_WALL_CLOCK, None, ~0, 12), (MSR_KVM_WALL_CLOCK_NEW, None, ~0, 12),
    (MSR_KVM_STEAL_TIME, 1, ~63, 64),
    (MSR_KVM_ASYNC_PF_EN, 1, ~63, 64),
    (MSR_KVM_PV_EOI_EN, 1, ~3, 4),
]


def kvm_written_areas(msrs: dict[int, int]) -> list[tuple[int, int, int]]:
    """(gpa, size, MSR) of every guest-memory area the vCPU's paravirtual MSRs hand to KVM."""
    out = []
    for index, enable, mask, size in _KVM_AREAS:
        value = msrs.get(index, 0)
        if (value & enable) if enable is not None else value:
            out.append((value & mask & (2**64 - 1), size, index))
    return out


def _pit_diffs(saved, got) -> list[str]:
    # KVM_SET_PIT2 reloads every channel's counter from its count at the time of the call
    # (arch/x86/kvm/i8254.c, kvm_vm_ioctl_set_pit2 -> kvm_pit_load_count), so count_load_time is
    # that moment: later than the saved one, never earlier. Every other field is copied.
    skip = {f"channels[{i}].count_load_time" for i in range(3)}
    diffs = state_verify.field_diffs(saved, got, skip=skip)
    for i in range(3):
        if got.channels[i].count_load_time < saved.channels[i].count_load_time:
            diffs.append(f"channels[{i}].count_load_time: saved {saved.channels[i].count_load_time}, read "
                         f"{got.channels[i].count_load_time}, earlier than the save")
    return diffs


def _clock_diffs(clock: S.kvm_clock_data, saved_at_ns: int, got: S.kvm_clock_data) -> list[str]:
    # kvmclock runs: it reads at least the saved value and at most that plus the time since the
    # save began (+1 ms for clock granularity), whether KVM advanced it by the realtime elapsed
    # (KVM_CLOCK_REALTIME) or it has counted since KVM_SET_CLOCK.
    saved = clock.clock
    most = saved + time.monotonic_ns() - saved_at_ns + 1_000_000
    if saved <= got.clock <= most:
        return []
    return [f"clock: saved {saved} ns, read {got.clock} ns, outside [{saved}, {most}]"]
