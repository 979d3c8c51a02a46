"""Asynchronous page faults end to end (Documentation/virt/kvm/x86/msr.rst MSR_KVM_ASYNC_PF_EN,
MSR_KVM_ASYNC_PF_INT, MSR_KVM_ASYNC_PF_ACK; kvm-unit-tests asyncpf): the guest's memory is a
file whose pages the host has dropped from its page cache, so the first access to one must wait
for disk I/O. With async PF enabled, KVM does not stall the vCPU meanwhile but gives the guest a
'page not present' #PF carrying a token in CR2 (flags bit 0 set in struct
kvm_vcpu_pv_apf_data), then a 'page ready' interrupt with the same token once the page is in.

The access is made at CPL3, which this host runs natively: its CPL0 code is emulated, and the
emulator reads guest memory synchronously, so no fault of its own could be made asynchronous.
"""

import os

import pytest

from kvmtest.guest import layout as L
from kvmtest.guest.msr_source import wrmsr
from kvmtest.guest.paging import KiB4
from kvmtest.memory import HostMapping
from kvmtest.x86 import (
    APIC_DEFAULT_PHYS_BASE,
    KVM_ASYNC_PF_DELIVERY_AS_INT,
    KVM_ASYNC_PF_ENABLED,
    MSR_KVM_ASYNC_PF_ACK,
    MSR_KVM_ASYNC_PF_EN,
    MSR_KVM_ASYNC_PF_INT,
    PF_VECTOR,
    PTE_P,
    PTE_PCD,
    PTE_RW,
)

pytestmark = [pytest.mark.requires_cap("KVM_CAP_ASYNC_PF"), pytest.mark.requires_cap("KVM_CAP_ASYNC_PF_INT"),
              pytest.mark.requires_cap("KVM_CAP_IRQCHIP")]

APF_DATA = L.DATA + 0xC00        # struct kvm_vcpu_pv_apf_data: flags at 0, token at 4
RECORD = L.DATA + 0xC80          # the handlers' record (below)
PF_FLAGS, PF_TOKEN, PF_COUNT, READY_COUNT, READY_TOKEN = (RECORD + 8 * i for i in range(5))
READY_VECTOR = 0xEC
FILE_GPA = 0x300000              # the file's pages, inside the identity map and past slot 0
FILE_SIZE = 0x10000
OFFSET = 0x5008                  # the word the guest reads, in the file's sixth page


GUEST = f"""
    mov rbx, {APIC_DEFAULT_PHYS_BASE:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: software enable
    {wrmsr(MSR_KVM_ASYNC_PF_INT, READY_VECTOR)}
    {wrmsr(MSR_KVM_ASYNC_PF_EN, APF_DATA | KVM_ASYNC_PF_DELIVERY_AS_INT | KVM_ASYNC_PF_ENABLED)}
    push SEL_USER_DATA | 3                      # to CPL3 with IF=1 (RFLAGS 0x202)
    push USER_STACK_TOP
    push 0x202
    push SEL_USER_CODE64 | 3
    mov rax, user
    push rax
    iretq
user:
GUEST_AT_CPL 3
    mov rdi, {FILE_GPA:#x}
    mov rax, qword ptr [rdi + {OFFSET:#x}]
    GUEST_SYNC rax
    GUEST_DONE

not_present:                                    # #PF, CPL0: error code on the stack
    push rax
    push rcx
    push rsi
    mov rsi, {APF_DATA:#x}
    mov eax, dword ptr [rsi]
    mov rcx, {PF_FLAGS:#x}
    mov qword ptr [rcx], rax
    mov dword ptr [rsi], 0                      # done with the event: clear flags (msr.rst)
    mov rax, cr2
    mov rcx, {PF_TOKEN:#x}
    mov qword ptr [rcx], rax
    mov rcx, {PF_COUNT:#x}
    inc qword ptr [rcx]
wait_ready:                                     # until 'page ready' brings this token back
    cli
    mov rcx, {READY_TOKEN:#x}
    cmp qword ptr [rcx], rax
    je ready
    sti
    hlt
    jmp wait_ready
ready:
    pop rsi
    pop rcx
    pop rax
    add rsp, 8                                  # the error code
    iretq                                       # and the access is made again

page_ready:                                     # 'page ready' interrupt
    push rax
    push rcx
    push rdx
    push rsi
    mov rsi, {APF_DATA + 4:#x}
    mov eax, dword ptr [rsi]
    mov rcx, {READY_TOKEN:#x}
    mov qword ptr [rcx], rax
    mov rcx, {READY_COUNT:#x}
    inc qword ptr [rcx]
    mov dword ptr [rsi], 0                      # done: clear the token, then ACK (msr.rst)
    {wrmsr(MSR_KVM_ASYNC_PF_ACK, 1)}
    mov dword ptr [rbx + 0xB0], 0               # EOI
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq
"""


def _file_pages(tmp_dir, size: int):
    """A file of `size` bytes, each 8-byte word its own offset plus a marker, flushed to disk and
    dropped from the page cache (posix_fadvise DONTNEED); its fd."""
    path = os.path.join(tmp_dir, "async-pf-backing")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.unlink(path)
    os.write(fd, b"".join((0x5A5A000000000000 + i).to_bytes(8, "little") for i in range(0, size, 8)))
    os.fsync(fd)
    os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
    return fd


def test_page_not_present_then_page_ready_for_a_page_the_host_must_read(guest):
    """The guest's first read of a page the host has to bring in from disk takes one 'page not
    present' #PF with flags bit 0 set ("indicates that the guest is dealing with asynchronous
    'page not present' event") and a token in CR2; a 'page ready' interrupt on the
    MSR_KVM_ASYNC_PF_INT vector then carries "a token which was previously delivered in CR2"; the
    read, made again, returns the file's data (msr.rst MSR_KVM_ASYNC_PF_EN)."""
    fd = _file_pages("/var/tmp", FILE_SIZE)
    try:
        mapping = HostMapping(FILE_SIZE, fd=fd, name="async PF file")
        if any(mapping.resident()):
            mapping.close()
            pytest.skip("the host keeps the file's pages cached after POSIX_FADV_DONTNEED (a memory-backed "
                        "/var/tmp?): no access would have to wait for I/O")
        g = guest("long64", GUEST, irqchip=True, user_pages=True)
        g.vm.add_memory(FILE_GPA, FILE_SIZE, mapping=mapping)
        g.page_tables.map(APIC_DEFAULT_PHYS_BASE, APIC_DEFAULT_PHYS_BASE, KiB4, PTE_P | PTE_RW | PTE_PCD)
        g.set_idt_gate(PF_VECTOR, "not_present")
        g.set_idt_gate(READY_VECTOR, "page_ready")
        (value,) = g.run_to_done()
    finally:
        os.close(fd)
    record = {name: int.from_bytes(g.vm.read(addr, 8), "little") for name, addr in
              (("pf_flags", PF_FLAGS), ("pf_token", PF_TOKEN), ("pf_count", PF_COUNT), ("ready_count", READY_COUNT),
               ("ready_token", READY_TOKEN))}
    assert value == 0x5A5A000000000000 + OFFSET, f"the guest read {value:#x} at file offset {OFFSET:#x}"
    assert record["pf_count"] == 1 and record["pf_flags"] == 1 and record["pf_token"] != 0, \
        f"'page not present': {record}; expected one #PF with flags 1 and a token in CR2"
    assert record["ready_token"] == record["pf_token"], \
        f"'page ready' token {record['ready_token']:#x}, the #PF's CR2 token {record['pf_token']:#x}"
