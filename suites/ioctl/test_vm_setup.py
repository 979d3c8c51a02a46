"""VM setup ioctls: boot CPU id, TSS and identity-map addresses, ioeventfd, coalesced MMIO,
KVM_GET_CPUID2 and KVM_TRANSLATE edge cases."""

import ctypes
import errno
from itertools import zip_longest

import pytest

from kvmtest.abi import constants as C
from kvmtest.abi import structs as S
from kvmtest.abi.constants import errno_name
from kvmtest.eventfd import EventFd
from kvmtest.exits import IoExit, MmioExit
from kvmtest.guest.layout import CODE, MMIO_BASE
from kvmtest.libc import PAGE_SIZE
from kvmtest.x86 import APIC_BASE_BSP, MSR_IA32_APIC_BASE


@pytest.mark.requires_cap("KVM_CAP_SET_BOOT_CPU_ID")
def test_boot_cpu_id_rules(kvm, vm):
    """KVM_SET_BOOT_CPU_ID takes a vCPU id (api.rst 4.41): values above KVM_CAP_MAX_VCPU_ID
    and values with bits 63:32 set are EINVAL; once a vCPU exists it is EBUSY (selftests
    set_boot_cpu_id). The id equal to KVM_CAP_MAX_VCPU_ID is left out: the kernel accepts it
    although no vCPU can have it, and api.rst does not say which answer is right."""
    max_id = kvm.check_extension("KVM_CAP_MAX_VCPU_ID")
    for bad in (max_id + 1, 1 << 32):
        err = vm.try_set_boot_cpu_id(bad)
        assert err == errno.EINVAL, f"KVM_SET_BOOT_CPU_ID {bad:#x}: expected EINVAL, got {errno_name(err)}"
    assert vm.try_set_boot_cpu_id(1) == 0
    vm.create_vcpu(1)
    err = vm.try_set_boot_cpu_id(0)
    assert err == errno.EBUSY, f"KVM_SET_BOOT_CPU_ID after KVM_CREATE_VCPU: expected EBUSY, got {errno_name(err)}"


@pytest.mark.requires_cap("KVM_CAP_SET_BOOT_CPU_ID")
@pytest.mark.parametrize("boot_id", [None, 0, 1], ids=["default", "vcpu0", "vcpu1"])
def test_boot_cpu_runs_with_the_bsp_flag_and_the_others_without(kvm, guest, boot_id):
    """The vCPU KVM_SET_BOOT_CPU_ID names (vCPU 0 when the ioctl is not called) reads
    IA32_APIC_BASE with BSP (bit 8) set, every other vCPU with it clear (api.rst 4.41; SDM Vol. 3A
    11.4.4 IA32_APIC_BASE, 9.4.1: one processor is the BSP; selftests set_boot_cpu_id)."""
    source = f"mov ecx, {MSR_IA32_APIC_BASE:#x}\nrdmsr\nGUEST_SYNC eax\nGUEST_DONE"
    with kvm.create_vm() as vm:
        vm.create_irqchip()  # the local APICs hold IA32_APIC_BASE
        if boot_id is not None:
            vm.set_boot_cpu_id(boot_id)
        g = guest("long64", source, vm=vm)
        g.add_vcpu(CODE)
        bsp = 0 if boot_id is None else boot_id
        for vcpu in g.vm.vcpus:
            # An AP waits for INIT/SIPI (KVM_MP_STATE_UNINITIALIZED); this one runs at once.
            vcpu.set_mp_state(C.KVM_MP_STATE_RUNNABLE)
            (apic_base,) = g.run_to_done(vcpu=vcpu)
            want = APIC_BASE_BSP if vcpu.id == bsp else 0
            assert apic_base & APIC_BASE_BSP == want, \
                f"vCPU {vcpu.id} read IA32_APIC_BASE {apic_base:#x}: BSP (bit 8) expected " \
                f"{'set' if want else 'clear'} with boot CPU {bsp}"


def test_tss_and_identity_map_addresses_before_vcpus(vm):
    """KVM_SET_TSS_ADDR and KVM_SET_IDENTITY_MAP_ADDR are accepted before vCPUs exist
    (api.rst 4.36, 4.40); the identity map "fails if any VCPU has already been created"."""
    vm.set_tss_addr(0xFFFBD000)
    vm.set_identity_map_addr(0xFFFBC000)
    vm.create_vcpu()
    err = vm.try_set_identity_map_addr(0xFFFBC000)
    assert err != 0, "KVM_SET_IDENTITY_MAP_ADDR succeeded after KVM_CREATE_VCPU"


def test_translate_of_a_noncanonical_address_is_invalid(vm):
    """KVM_TRANSLATE reports valid=0 for an address the vCPU cannot translate: with paging off,
    2^64-1 lies beyond the 32-bit linear address space (kvm-ioctls test_translate_gva)."""
    vcpu = vm.create_vcpu()
    tr = vcpu.translate(2**64 - 1)
    assert tr.valid == 0, f"KVM_TRANSLATE(0xffffffffffffffff): expected valid=0, got {tr}"


def test_get_cpuid2_with_too_few_entries_is_e2big_and_keeps_nent(vm):
    """KVM_GET_CPUID2 with nent below the vCPU's table fails with E2BIG and leaves nent as the
    caller set it (api.rst 4.46 for the E2BIG rule; selftests cpuid_test test_get_cpuid2)."""
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
    buf, err = vcpu.try_get_cpuid(1)
    assert err == errno.E2BIG, f"KVM_GET_CPUID2 nent=1: expected E2BIG, got {errno_name(err)}"
    assert buf.nent == 1, f"nent changed to {buf.nent} on E2BIG"
    assert len(vcpu.get_cpuid()) == len(vm.kvm.cached_supported_cpuid())


@pytest.mark.requires_cap("KVM_CAP_IOEVENTFD")
@pytest.mark.parametrize("length", [1, 2, 4, 8])
def test_mmio_ioeventfd_with_datamatch_signals_instead_of_exiting(guest, length):
    """A guest write to an ioeventfd address with matching data signals the eventfd instead of
    exiting (api.rst 4.59); a non-matching write still exits as MMIO."""
    reg = {1: "al", 2: "ax", 4: "eax", 8: "rax"}[length]
    width = {1: "byte", 2: "word", 4: "dword", 8: "qword"}[length]
    g = guest("long64", f"mov rbx, {MMIO_BASE:#x}\nmov rax, 0x42\nmov {width} ptr [rbx], {reg}\n"
                        f"mov rax, 0x43\nmov {width} ptr [rbx], {reg}\nGUEST_DONE")
    with EventFd() as efd:
        g.vm.assign_ioeventfd(efd, MMIO_BASE, length, datamatch=0x42)
        exit_ = g.run()
        assert getattr(exit_, "phys_addr", None) == MMIO_BASE and exit_.value == 0x43, \
            f"expected only the non-matching write (0x43) to exit, got {exit_}"
        assert efd.count() == 1, "the matching write did not signal the eventfd"
        g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_IOEVENTFD")
def test_pio_ioeventfd_and_unregistering(guest):
    """A PIO ioeventfd swallows the OUT (api.rst 4.59); after KVM_IOEVENTFD_FLAG_DEASSIGN the
    OUT exits again, and deassigning one never registered fails (kvm-ioctls
    test_unregister_ioevent)."""
    g = guest("long64", "out 0x70, al\nGUEST_SYNC 1\nout 0x70, al\nGUEST_DONE")
    with EventFd() as efd:
        g.vm.assign_ioeventfd(efd, 0x70, 1, pio=True)
        assert g.expect_sync() == 1
        assert efd.count() == 1, "the OUT did not signal the eventfd"
        g.vm.deassign_ioeventfd(efd, 0x70, 1, pio=True)
        g.expect_exit(IoExit, port=0x70)
        err = g.vm.try_deassign_ioeventfd(efd, 0x71, 1, pio=True)
        assert err != 0, "deassigning an ioeventfd that was never registered succeeded"


@pytest.mark.requires_cap("KVM_CAP_COALESCED_MMIO")
def test_coalesced_mmio_writes_wait_in_the_ring(guest):
    """Writes to a coalesced MMIO zone do not exit; they are appended to the ring in the vCPU
    mapping at page KVM_CAP_COALESCED_MMIO (api.rst KVM_REGISTER_COALESCED_MMIO) with address,
    length and data, and appear there by the next exit. After KVM_UNREGISTER_COALESCED_MMIO
    the same write exits again."""
    g = guest("long64", f"mov rbx, {MMIO_BASE + 0x100:#x}\n" +
              "\n".join(f"mov dword ptr [rbx + {4 * i}], {0x1000 + i}" for i in range(5)) +
              "\nout 0x10, al\nmov dword ptr [rbx], 0x2000\nGUEST_DONE")
    g.vm.register_coalesced_mmio(MMIO_BASE, 0x1000)
    g.expect_exit(IoExit, port=0x10)
    got = [(e.phys_addr, e.len, int.from_bytes(bytes(e.data)[:e.len], "little")) for e in g.vcpu.drain_coalesced_ring()]
    assert got == [(MMIO_BASE + 0x100 + 4 * i, 4, 0x1000 + i) for i in range(5)], \
        f"ring entries (gpa, len, data) {[(hex(a), n, hex(d)) for a, n, d in got]}"
    g.vm.unregister_coalesced_mmio(MMIO_BASE, 0x1000)
    g.expect_exit(MmioExit, phys_addr=MMIO_BASE + 0x100, is_write=True)
    assert g.vcpu.drain_coalesced_ring() == [], "a write after unregistering was queued in the ring"


@pytest.mark.requires_cap("KVM_CAP_COALESCED_PIO")
def test_coalesced_pio_writes_wait_in_the_ring(guest):
    """With a coalesced zone for a port range (kvm_coalesced_mmio_zone.pio = 1), OUTs to it do not
    exit and appear in the ring with their port, size and data (api.rst KVM_REGISTER_COALESCED_MMIO,
    KVM_CAP_COALESCED_PIO)."""
    g = guest("long64", "mov al, 0x11\nout 0x70, al\nmov al, 0x22\nout 0x70, al\nout 0x10, al\nGUEST_DONE")
    g.vm.register_coalesced_mmio(0x70, 2, pio=True)
    g.expect_exit(IoExit, port=0x10)
    got = [(e.phys_addr, e.len, e.pio, e.data[0]) for e in g.vcpu.drain_coalesced_ring()]
    assert got == [(0x70, 1, 1, 0x11), (0x70, 1, 1, 0x22)], f"ring entries (port, len, pio, data) {got}"


# struct kvm_coalesced_mmio_ring: u32 first, u32 last, then the entries filling the page
# (<linux/kvm.h> KVM_COALESCED_MMIO_MAX). first == last means empty, so it holds one fewer.
RING_ENTRIES = (PAGE_SIZE - ctypes.sizeof(S.kvm_coalesced_mmio_ring)) // ctypes.sizeof(S.kvm_coalesced_mmio)
ZONE_GPA, ZONE_PORT = MMIO_BASE + 0x100, 0x80


@pytest.mark.requires_cap("KVM_CAP_COALESCED_MMIO")
@pytest.mark.requires_cap("KVM_CAP_COALESCED_PIO")
def test_full_coalesced_ring_exits_with_the_write_it_cannot_hold(guest):
    """Coalesced MMIO and PIO writes, interleaved, queue in one ring in the order made; the ring
    holds KVM_COALESCED_MMIO_MAX - 1 of them (first == last means empty), and the write that finds
    it full is not lost: it exits as an ordinary KVM_EXIT_MMIO or KVM_EXIT_IO with its data (api.rst
    4.116 KVM_(UN)REGISTER_COALESCED_MMIO; <linux/kvm.h> struct kvm_coalesced_mmio_ring). Each round
    drains the ring after the exit, so round k starts at entry -k mod KVM_COALESCED_MMIO_MAX and the
    rounds between them start once at every index (selftests coalesced_io_test)."""
    g = guest("long64", f"""
        mov rbx, {ZONE_GPA:#x}
        mov dx, {ZONE_PORT:#x}
        xor edi, edi                            # round
    round:
        xor esi, esi                            # write number within the round
    fill:
        mov eax, edi
        shl eax, 16
        or eax, esi                             # data: round << 16 | write number
        cmp esi, {RING_ENTRIES - 1}
        je last                                 # the write that finds the ring full
        test esi, 1
        jnz fill_pio
        mov qword ptr [rbx], rax
        jmp next
    fill_pio:
        out dx, eax
    next:
        inc esi
        jmp fill
    last:
        test edi, 1
        jnz last_pio
        mov qword ptr [rbx], rax
        jmp done_round
    last_pio:
        out dx, eax
    done_round:
        inc edi
        cmp edi, {RING_ENTRIES}
        jb round
        GUEST_DONE""")
    g.vm.register_coalesced_mmio(ZONE_GPA, 8)
    g.vm.register_coalesced_mmio(ZONE_PORT, 8, pio=True)
    held = RING_ENTRIES - 1
    for rnd in range(RING_ENTRIES):
        value = rnd << 16 | held
        if rnd % 2 == 0:
            g.expect_exit(MmioExit, phys_addr=ZONE_GPA, len=8, is_write=True, data=value.to_bytes(8, "little"))
        else:
            g.expect_exit(IoExit, port=ZONE_PORT, size=4, count=1, data=value.to_bytes(4, "little"))
        got = [(e.pio, e.phys_addr, e.len, int.from_bytes(bytes(e.data)[:e.len], "little"))
               for e in g.vcpu.drain_coalesced_ring()]
        want = [(1, ZONE_PORT, 4, rnd << 16 | i) if i % 2 else (0, ZONE_GPA, 8, rnd << 16 | i) for i in range(held)]
        if got != want:
            i, w, x = next((i, w, x) for i, (w, x) in enumerate(zip_longest(want, got)) if w != x)
            pytest.fail(f"round {rnd}: the ring held {len(got)} entries, expected {held} (pio, addr, len, data); "
                        f"first difference at entry {i}: expected {w}, got {x}")
    g.run_to_done()
