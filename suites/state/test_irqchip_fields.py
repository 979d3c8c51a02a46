"""The fields of KVM_GET/SET_IRQCHIP's chips, struct kvm_pic_state (both 8259As) and struct
kvm_ioapic_state, against what the guest programs or reads through the chips' own registers
(api.rst 4.26/4.27; Intel 8259A datasheet: ICW1-4, OCW1-3; Intel 82093AA I/O APIC datasheet
3.2: IOREGSEL, IOWIN, IOAPICID, IOREDTBL; Intel PIIX4 datasheet 4.1.9: ELCR1/ELCR2)."""

import ctypes

import pytest

from kvmtest.abi import constants as C
from kvmtest.abi import structs as S
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
IOAPIC = 0xFEC00000


def _pic(vm, chip_id):
    return S.kvm_pic_state.from_buffer_copy(bytes(vm.get_irqchip(chip_id).chip)[:ctypes.sizeof(S.kvm_pic_state)])


def _ioapic(vm):
    raw = bytes(vm.get_irqchip(C.KVM_IRQCHIP_IOAPIC).chip)
    return S.kvm_ioapic_state.from_buffer_copy(raw[:ctypes.sizeof(S.kvm_ioapic_state)])


def _outs(pairs):
    return "\n".join(f"mov al, {v:#x}\nout {p:#x}, al" if p < 0x100 else f"mov dx, {p:#x}\nmov al, {v:#x}\nout dx, al"
                     for p, v in pairs)


PIC_PROGRAM = [
    (0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x03),   # master ICW1-4: base 0x30, slave on IR2, AEOI
    (0xA0, 0x11), (0xA1, 0x38),                               # slave ICW1-2 (stop here: mid-initialization)
]
PIC_PROGRAM_REST = [
    (0xA1, 0x02), (0xA1, 0x11),                               # slave ICW3-4: cascade id 2, SFNM
    (0x21, 0xF2), (0xA1, 0xFF),                               # OCW1: interrupt masks
    (0x20, 0x80),                                             # master OCW2: rotate in automatic EOI mode
    (0x20, 0xC3),                                             # master OCW2: set priority, IR3 lowest
    (0x20, 0x0B),                                             # master OCW3: reads return the ISR
    (0x20, 0x68),                                             # master OCW3: enter special mask mode
    (0xA0, 0x0C),                                             # slave OCW3: poll command
    (0x4D0, 0xFF), (0x4D1, 0xFF),                             # ELCR1/ELCR2: every writable IRQ level
]


def test_pic_state_is_what_the_guest_programmed(guest):
    """Each kvm_pic_state field after the guest programs both 8259As through ports 0x20/0x21,
    0xA0/0xA1 and the ELCRs at 0x4D0/0x4D1 (8259A datasheet; PIIX4 4.1.9), and after the host
    asserts IRQ line 4, masked in the IMR, with KVM_IRQ_LINE (api.rst 4.25): irq_base from ICW2,
    init4 from ICW1, auto_eoi and special_fully_nested_mode from ICW4, init_state nonzero only
    while initialization is incomplete, imr from OCW1, rotate_on_auto_eoi and priority_add
    (lowest priority IR3: the highest is IR4) from OCW2, read_reg_select, special_mask and poll
    from OCW3, elcr and elcr_mask (ELCR1 bits 2:0 and ELCR2 bits 0 and 5 are reserved), irr
    and last_irr with line 4, isr empty."""
    g = guest("long64", f"{_outs(PIC_PROGRAM)}\nGUEST_SYNC 1\n{_outs(PIC_PROGRAM_REST)}\nGUEST_SYNC 2\nGUEST_DONE",
              irqchip=True)
    assert g.expect_sync() == 1
    mid = _pic(g.vm, C.KVM_IRQCHIP_PIC_SLAVE).init_state
    assert mid != 0, "slave 8259A init_state is 0 between ICW2 and ICW3: initialization reported complete"
    assert g.expect_sync() == 2
    g.vm.irq_line(4, 1)
    master, slave = _pic(g.vm, C.KVM_IRQCHIP_PIC_MASTER), _pic(g.vm, C.KVM_IRQCHIP_PIC_SLAVE)
    want_master = {"irq_base": 0x30, "init4": 1, "auto_eoi": 1, "special_fully_nested_mode": 0, "init_state": 0,
                   "imr": 0xF2, "rotate_on_auto_eoi": 1, "priority_add": 4, "read_reg_select": 1, "special_mask": 1,
                   "poll": 0, "elcr": 0xF8, "elcr_mask": 0xF8, "isr": 0}
    want_slave = {"irq_base": 0x38, "init4": 1, "auto_eoi": 0, "special_fully_nested_mode": 1, "init_state": 0,
                  "imr": 0xFF, "poll": 1, "elcr": 0xDE, "elcr_mask": 0xDE, "isr": 0}
    wrong = [f"master.{k}: {getattr(master, k):#x}, expected {v:#x}" for k, v in want_master.items()
             if getattr(master, k) != v]
    wrong += [f"slave.{k}: {getattr(slave, k):#x}, expected {v:#x}" for k, v in want_slave.items()
              if getattr(slave, k) != v]
    assert not wrong, "KVM_GET_IRQCHIP after the guest programmed the 8259As: " + "; ".join(wrong)
    assert master.irr & 0x10 and master.last_irr & 0x10, \
        f"master irr {master.irr:#x} last_irr {master.last_irr:#x} after KVM_IRQ_LINE(4, 1): bit 4 should be set " \
        "(the IRR latches a request whatever the IMR says)"
    g.vm.irq_line(4, 0)
    g.run_to_done()


PIC_READS = """
    in al, 0x21
    GUEST_SYNC rax
    mov al, 0x0A
    out 0x20, al
    in al, 0x20
    GUEST_SYNC rax
    mov al, 0x0B
    out 0x20, al
    in al, 0x20
    GUEST_SYNC rax
    mov dx, 0x4D0
    in al, dx
    GUEST_SYNC rax
    GUEST_DONE
"""


def test_pic_state_set_by_the_host_is_what_the_guest_reads(guest):
    """imr, irr, isr and elcr written with KVM_SET_IRQCHIP are what the guest reads from the master
    8259A: IN from 0x21 (IMR), IN from 0x20 after OCW3 0x0A (IRR) and 0x0B (ISR), IN from 0x4D0
    (ELCR1) (api.rst 4.27; 8259A datasheet OCW3; PIIX4 4.1.9)."""
    g = guest("long64", "xor eax, eax\n" + PIC_READS, irqchip=True)
    chip = g.vm.get_irqchip(C.KVM_IRQCHIP_PIC_MASTER)
    pic = S.kvm_pic_state.from_buffer_copy(bytes(chip.chip)[:ctypes.sizeof(S.kvm_pic_state)])
    pic.imr, pic.irr, pic.isr, pic.elcr = 0xE7, 0x40, 0x08, 0x20
    ctypes.memmove(ctypes.addressof(chip.chip), ctypes.addressof(pic), ctypes.sizeof(pic))
    g.vm.set_irqchip(chip)
    seen = [v & 0xFF for v in g.run_to_done()]
    assert seen == [0xE7, 0x40, 0x08, 0x20], \
        f"the guest read IMR, IRR, ISR, ELCR1 {[hex(v) for v in seen]}; KVM_SET_IRQCHIP wrote 0xe7, 0x40, 0x8, 0x20"


REDIR_PIN = 5
REDIR_ENTRY = 0x0300_0000_0001_A035      # destination 3, masked, level, active low, fixed, vector 0x35


def _ioapic_guest(guest, body):
    g = guest("long64", f"mov rbx, {IOAPIC:#x}\n{body}", irqchip=True)
    g.page_tables.map(IOAPIC, IOAPIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    return g


def test_ioapic_state_is_what_the_guest_programmed(guest):
    """kvm_ioapic_state after the guest writes IOAPICID and a redirection entry through
    IOREGSEL/IOWIN, and the host asserts that (masked, level-triggered) pin with KVM_IRQ_LINE:
    base_address is the default 0xFEC00000, id the IOAPICID bits 27:24 written, ioregsel the
    last register index selected, redirtbl[5] the entry written (no remote IRR or delivery
    status while masked) and irr has bit 5 (82093AA datasheet 3.2; api.rst 4.25, 4.26)."""
    lo, hi = REDIR_ENTRY & 0xFFFFFFFF, REDIR_ENTRY >> 32
    g = _ioapic_guest(guest, f"""
        mov dword ptr [rbx], 0
        mov dword ptr [rbx + 0x10], 0x0A000000
        mov dword ptr [rbx], {0x10 + 2 * REDIR_PIN:#x}
        mov dword ptr [rbx + 0x10], {lo:#x}
        mov dword ptr [rbx], {0x11 + 2 * REDIR_PIN:#x}
        mov dword ptr [rbx + 0x10], {hi:#x}
        mov dword ptr [rbx], 0x1B
        GUEST_SYNC 1
        GUEST_DONE""")
    assert g.expect_sync() == 1
    g.vm.irq_line(REDIR_PIN, 1)
    s = _ioapic(g.vm)
    got = {"base_address": s.base_address, "id": s.id, "ioregsel": s.ioregsel, "redirtbl[5]": s.redirtbl[REDIR_PIN]}
    want = {"base_address": IOAPIC, "id": 0xA, "ioregsel": 0x1B, "redirtbl[5]": REDIR_ENTRY}
    assert got == want, "KVM_GET_IRQCHIP IOAPIC after the guest's programming: " + \
        ", ".join(f"{k} {got[k]:#x} (expected {want[k]:#x})" for k in got)
    assert s.irr >> REDIR_PIN & 1, f"IOAPIC irr {s.irr:#x} with pin {REDIR_PIN} asserted by KVM_IRQ_LINE"
    g.vm.irq_line(REDIR_PIN, 0)
    g.run_to_done()


def test_ioapic_state_set_by_the_host_is_what_the_guest_reads(guest):
    """id and a redirection entry written with KVM_SET_IRQCHIP are what the guest reads through
    IOREGSEL/IOWIN: IOAPICID bits 27:24 and both halves of IOREDTBL7 (api.rst 4.27; 82093AA 3.2)."""
    g = _ioapic_guest(guest, """
        mov dword ptr [rbx], 0
        mov eax, dword ptr [rbx + 0x10]
        GUEST_SYNC rax
        mov dword ptr [rbx], 0x1E
        mov eax, dword ptr [rbx + 0x10]
        GUEST_SYNC rax
        mov dword ptr [rbx], 0x1F
        mov eax, dword ptr [rbx + 0x10]
        GUEST_SYNC rax
        GUEST_DONE""")
    chip = g.vm.get_irqchip(C.KVM_IRQCHIP_IOAPIC)
    s = S.kvm_ioapic_state.from_buffer_copy(bytes(chip.chip)[:ctypes.sizeof(S.kvm_ioapic_state)])
    s.id, s.redirtbl[7] = 0x5, 0x0100_0000_0001_0047
    ctypes.memmove(ctypes.addressof(chip.chip), ctypes.addressof(s), ctypes.sizeof(s))
    g.vm.set_irqchip(chip)
    seen = g.run_to_done()
    assert [seen[0] >> 24 & 0xF, seen[1], seen[2]] == [0x5, 0x10047, 0x01000000], \
        f"the guest read IOAPICID {seen[0]:#x}, IOREDTBL7 {seen[2]:#x}:{seen[1]:#x}; KVM_SET_IRQCHIP wrote id 5 and " \
        "0x0100000000010047"
