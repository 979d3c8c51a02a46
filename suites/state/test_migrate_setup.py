"""What a VMM set up and KVM cannot report, carried by a migration (kvmtest.carried, kvmtest.vm_state):
per-vCPU KVM_SET_GUEST_DEBUG and KVM_ENABLE_CAP, VM setup undone before the save (it stays undone),
memslots however they were made and whatever host memory they share, coalesced MMIO writes nobody
drained, kvm_run.cr8, which KVM_RUN loads into CR8, and registers written into kvm_run.s for the
next KVM_RUN to load (api.rst 4.35 KVM_SET_USER_MEMORY_REGION,
4.59 KVM_IOEVENTFD, 4.87 KVM_SET_GUEST_DEBUG, KVM_REGISTER_COALESCED_MMIO, 5 "The kvm_run structure").
Each is checked by what the guest does in the new VM."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.eventfd import EventFd
from kvmtest.exits import DebugExit, HltExit, MmioExit
from kvmtest.guest import layout as L
from kvmtest.memory import HostMapping
from kvmtest.x86 import DB_VECTOR, DR6_B0, DR6_BS, DR6_INIT, MSR_KVM_SYSTEM_TIME_NEW

ENABLE = C.KVM_GUESTDBG_ENABLE
SLOT_A, SLOT_B = 0x300000, 0x380000   # inside the 4 MiB identity map, outside slot 0
PAGE = 0x1000


def _ring(entries):
    return [(e.phys_addr, e.len, int.from_bytes(bytes(e.data)[:e.len], "little")) for e in entries]


@pytest.mark.requires_cap("KVM_CAP_SET_GUEST_DEBUG")
def test_single_stepping_goes_on_after_migration(guest):
    """KVM_GUESTDBG_SINGLESTEP set before the migration still applies after it: each instruction
    ends in KVM_EXIT_DEBUG, exception 1 (#DB) with DR6.BS, pc = the next instruction (api.rst 4.87;
    SDM Vol. 3A 18.3.1.4). KVM has no KVM_GET_GUEST_DEBUG, so only a replayed call can carry it."""
    g = guest("long64", "i0: mov eax, 1\ni1: add eax, 2\ni2: xor ecx, ecx\ni3: nop\nGUEST_ASSERT_EQ eax, 3\nGUEST_DONE")
    g.vcpu.set_guest_debug(ENABLE | C.KVM_GUESTDBG_SINGLESTEP)
    g.expect_exit(DebugExit, exception=DB_VECTOR, pc=g.labels["i1"])
    g.migrate()
    for label in ("i2", "i3"):
        exit_ = g.expect_exit(DebugExit, exception=DB_VECTOR, pc=g.labels[label])
        assert exit_.dr6 & DR6_BS, f"DR6 {exit_.dr6:#x} without BS after a single step in the new VM"
    g.vcpu.set_guest_debug(0)
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_SET_GUEST_DEBUG")
def test_hardware_breakpoint_set_before_migration_fires_after_it(guest):
    """An execute breakpoint set with KVM_GUESTDBG_USE_HW_BP (debugreg[0] = the address, DR7 L0)
    before the migration stops the guest at that address after it: KVM_EXIT_DEBUG, exception 1,
    DR6 = 0xffff0ff0 | B0 (api.rst 4.87; SDM Vol. 3A 18.2.4, 18.3.1.1)."""
    g = guest("long64", "GUEST_SYNC 1\nmov eax, 1\ntarget: nop\nGUEST_DONE")
    g.vcpu.set_guest_debug(ENABLE | C.KVM_GUESTDBG_USE_HW_BP, [g.labels["target"], 0, 0, 0, 0, 0, 0, 1])
    assert g.expect_sync() == 1
    g.migrate()
    g.expect_exit(DebugExit, exception=DB_VECTOR, pc=g.labels["target"], dr6=DR6_INIT | DR6_B0)


@pytest.mark.requires_cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID")
def test_enforced_pv_features_stay_enforced_after_migration(guest):
    """With KVM_CAP_ENFORCE_PV_FEATURE_CPUID enabled on the vCPU and KVM_FEATURE_CLOCKSOURCE2 (bit 3
    of CPUID 0x40000001 EAX) absent, WRMSR to MSR_KVM_SYSTEM_TIME_NEW (0x4b564d01) raises #GP(0),
    before the migration and after it (api.rst 7 KVM_CAP_ENFORCE_PV_FEATURE_CPUID; x86/msr.rst)."""
    wrmsr = f"mov ecx, {MSR_KVM_SYSTEM_TIME_NEW:#x}\nxor eax, eax\nxor edx, edx\nGUEST_ASSERT_RAISES GP(0), wrmsr\n"
    g = guest("long64", f"{wrmsr}GUEST_SYNC 1\n{wrmsr}GUEST_DONE")
    g.vcpu.enforce_pv_features(0)
    assert g.expect_sync() == 1
    g.migrate()
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_COALESCED_MMIO")
def test_undrained_coalesced_writes_come_out_of_the_new_vm_first(guest):
    """Writes queued in the coalesced MMIO ring and not drained before the migration are drained
    from the new VM, ahead of the write the guest makes there, in the guest's order, each with its
    address, length and data (api.rst KVM_REGISTER_COALESCED_MMIO)."""
    zone = L.MMIO_BASE + 0x100
    g = guest("long64", f"""
        mov rbx, {zone:#x}
        mov dword ptr [rbx], 0x1111
        mov dword ptr [rbx + 4], 0x2222
        GUEST_SYNC 1
        mov dword ptr [rbx + 8], 0x3333
        GUEST_DONE""")
    g.vm.register_coalesced_mmio(L.MMIO_BASE, 0x1000)
    assert g.expect_sync() == 1
    g.migrate()
    g.run_to_done()
    got = _ring(g.vcpu.drain_coalesced_ring())
    want = [(zone, 4, 0x1111), (zone + 4, 4, 0x2222), (zone + 8, 4, 0x3333)]
    assert got == want, f"ring entries (gpa, len, data) after migration: {got}, expected {want}"
    assert g.vcpu.drain_coalesced_ring() == [], "drained entries came back"


@pytest.mark.requires_cap("KVM_CAP_IOEVENTFD")
@pytest.mark.parametrize("how", ["deassign_ioeventfd", "try_deassign_ioeventfd"])
def test_deassigned_ioeventfd_stays_deassigned_after_migration(guest, how):
    """An ioeventfd assigned, then deassigned (KVM_IOEVENTFD_FLAG_DEASSIGN) before the migration is
    not brought back by it: the guest's write exits as KVM_EXIT_MMIO with its data and the eventfd
    is not signalled (api.rst 4.59 KVM_IOEVENTFD)."""
    g = guest("long64", f"mov rbx, {L.MMIO_BASE:#x}\nmov dword ptr [rbx], 0x1234\nGUEST_SYNC 1\n"
                        "mov dword ptr [rbx], 0x5678\nGUEST_DONE")
    with EventFd() as efd:
        g.vm.assign_ioeventfd(efd, L.MMIO_BASE, 4)
        assert g.expect_sync() == 1
        assert efd.count() == 1, "the write before the deassign did not signal the eventfd"
        assert not getattr(g.vm, how)(efd, L.MMIO_BASE, 4), f"{how} failed"
        g.migrate()
        exit_ = g.expect_exit(MmioExit, phys_addr=L.MMIO_BASE, len=4, is_write=True)
        assert exit_.value == 0x5678, f"{exit_}: expected the guest's 0x5678"
        g.run_to_done()
        assert efd.count() == 0, "the deassigned eventfd was signalled after the migration"


@pytest.mark.parametrize("change", ["delete", "move"])
def test_memslot_changed_with_the_raw_ioctl_stays_changed(guest, change):
    """A slot deleted (memory_size 0) or moved to another guest physical address with a raw
    KVM_SET_USER_MEMORY_REGION before the migration is deleted or moved after it (api.rst 4.35):
    a read of its old address exits as KVM_EXIT_MMIO, and a moved slot's bytes are at its new one."""
    g = guest("long64", f"""
        GUEST_SYNC 1
        mov rbx, {SLOT_A:#x}
        mov eax, dword ptr [rbx]
        GUEST_SYNC rax
        mov rbx, {SLOT_B:#x}
        mov eax, dword ptr [rbx]
        GUEST_SYNC rax
        GUEST_DONE""")
    slot = g.vm.add_memory(SLOT_A, PAGE)
    g.vm.write_u32(SLOT_A, 0x5A5A5A5A)
    assert g.expect_sync() == 1
    size, gpa = (0, SLOT_A) if change == "delete" else (PAGE, SLOT_B)
    g.vm.set_user_memory_region(slot.slot, 0, gpa, size, slot.mapping.addr)
    g.migrate()
    g.expect_exit(MmioExit, phys_addr=SLOT_A, len=4, is_write=False).respond(0xDEAD)
    assert g.expect_sync() == 0xDEAD
    if change == "move":
        assert g.expect_sync() == 0x5A5A5A5A, "the moved slot's bytes are not at its new address"
    else:
        g.expect_exit(MmioExit, phys_addr=SLOT_B, len=4, is_write=False).respond(0xBEEF)
        assert g.expect_sync() == 0xBEEF
    g.run_to_done()


def test_memslots_sharing_host_memory_still_share_it_after_migration(guest):
    """Two memslots whose userspace_addr is the same host memory are two guest physical views of one
    memory (api.rst 4.35): a store through one is read through the other before the migration and
    after it, and the host sees the last store at both addresses."""
    g = guest("long64", f"""
        mov rbx, {SLOT_A:#x}
        mov rcx, {SLOT_B:#x}
        mov dword ptr [rbx], 0x1111
        mov eax, dword ptr [rcx]
        GUEST_ASSERT_EQ eax, 0x1111
        GUEST_SYNC 1
        mov dword ptr [rbx], 0x2222
        mov eax, dword ptr [rcx]
        GUEST_ASSERT_EQ eax, 0x2222
        GUEST_DONE""")
    shared = HostMapping(PAGE, name="memory of two slots")
    g.vm.add_memory(SLOT_A, PAGE, mapping=shared)
    g.vm.add_memory(SLOT_B, PAGE, mapping=shared)
    assert g.expect_sync() == 1
    g.migrate()
    g.run_to_done()
    assert (g.vm.read_u32(SLOT_A), g.vm.read_u32(SLOT_B)) == (0x2222, 0x2222)


def test_slot_made_with_the_raw_ioctl_is_carried(guest):
    """A slot made with a raw KVM_SET_USER_MEMORY_REGION over memory the test mapped itself is in
    the new VM with its bytes: the guest reads them there, and its store lands in the new VM's copy,
    not in the old memory (api.rst 4.35)."""
    g = guest("long64", f"""
        mov rbx, {SLOT_A:#x}
        GUEST_SYNC 1
        mov eax, dword ptr [rbx]
        GUEST_ASSERT_EQ eax, 0x5A5A
        mov dword ptr [rbx + 4], 0x7777
        GUEST_DONE""")
    own = HostMapping(PAGE, name="the test's own memory")
    try:
        own.write(0, (0x5A5A).to_bytes(4, "little"))
        g.vm.set_user_memory_region(5, 0, SLOT_A, PAGE, own.addr)
        assert g.expect_sync() == 1
        g.migrate()
        g.run_to_done()
        assert g.vm.read_u32(SLOT_A + 4) == 0x7777, "the guest's store is not in the new VM's slot"
        assert own.read(4, 4) == bytes(4), "the guest in the new VM wrote into the old VM's memory"
    finally:
        g.close()
        own.close()


def test_cr8_of_a_vcpu_without_local_apic_survives_migration(guest):
    """Without an in-kernel local APIC, kvm_run.cr8 is an input KVM_RUN loads into CR8 and an
    output it stores at each exit (api.rst 5, "cr8: in (pre-kvm_run), out (post-kvm_run)"), so the
    copy needs it as well as KVM_GET_SREGS's cr8: the value the guest wrote with MOV to CR8 reads
    back after the migration (SDM Vol. 3A 11.8.6)."""
    g = guest("long64", "mov rax, 9\nmov cr8, rax\nGUEST_SYNC 1\nmov rax, cr8\nGUEST_SYNC rax\nGUEST_DONE")
    assert g.expect_sync() == 1
    g.migrate()
    assert g.run_to_done() == [9], "CR8 after migration (the guest wrote 9)"


@pytest.mark.requires_cap("KVM_CAP_SYNC_REGS")
def test_sync_registers_written_for_the_next_run_are_carried(guest):
    """Registers written into kvm_run.s.regs with KVM_SYNC_X86_REGS in kvm_dirty_regs are loaded by
    the next KVM_RUN (api.rst 5 "kvm_dirty_regs"), and KVM_GET_REGS does not show them before it:
    a vCPU stopped at HLT (KVM_EXIT_HLT, nothing to complete) migrated with RBX written that way
    reports that RBX in the new VM."""
    g = guest("long64", "hlt\nGUEST_SYNC rbx\nGUEST_DONE")
    run = g.vcpu.kvm_run
    run.kvm_valid_regs = C.KVM_SYNC_X86_REGS
    g.expect_exit(HltExit)
    run.s.regs.regs.rbx = 0x77
    run.kvm_dirty_regs = C.KVM_SYNC_X86_REGS
    g.migrate()
    assert g.run_to_done() == [0x77], "RBX written through kvm_run.s.regs before the migration"
