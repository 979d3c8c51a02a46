"""Canonical checks on the linear addresses a 64-bit guest loads into registers: the GDTR and IDTR
bases (LGDT, LIDT), the TR and LDTR bases from 16-byte descriptors (LTR, LLDT), and the MSRs that
hold a linear address (WRMSR of FS_BASE, GS_BASE, KERNEL_GS_BASE, LSTAR, CSTAR, SYSENTER_ESP/EIP)
(kvm-unit-tests la57).

A value that is canonical at 48 bits is loaded; one canonical only at 57 bits is loaded exactly when
the processor supports 5-level paging (CPUID.(EAX=07H,ECX=0):ECX.LA57[16]) whether or not CR4.LA57
is set, as these checks use the processor's linear-address width, not the paging mode; one that is
canonical at neither raises #GP and changes nothing: #GP(0) for LGDT/LIDT and WRMSR, #GP(selector)
for LTR/LLDT (SDM Vol. 2B WRMSR; AMD APM Vol. 3 LGDT, LIDT, LLDT, LTR, WRMSR; the 5-level paging
rule: SDM Vol. 3A 4.1.1 and Intel's "5-Level Paging and 5-Level EPT" 2.5). The vCPU's CPUID is
KVM's supported table, so LA57 is there exactly when KVM offers it. Run in 64-bit mode with 4-level
paging and, where LA57 is offered, 5-level paging; again through KVM's emulator with the
forced-emulation prefix where the kvm module allows it.
"""

import pytest

from kvmtest import forced_emulation
from kvmtest.cpuid import has_feature
from kvmtest.guest import descriptors as D
from kvmtest.guest import layout as L
from kvmtest.guest.mode_select import ANY, select
from kvmtest.x86 import (
    CR4_LA57,
    MSR_IA32_CSTAR,
    MSR_IA32_FS_BASE,
    MSR_IA32_GS_BASE,
    MSR_IA32_KERNEL_GS_BASE,
    MSR_IA32_LSTAR,
    MSR_IA32_SYSENTER_EIP,
    MSR_IA32_SYSENTER_ESP,
    SYS_TYPE_LDT,
    SYS_TYPE_TSS_AVAILABLE,
)

MODES = select(code_bits=64, cpl=0, feature=ANY)        # long64, long64-la57
VALUES = {
    "canonical48": 0xFFFF876543210000,   # bits 63:47 equal
    "canonical57": 0xFFC0000000001000,   # bits 63:56 equal, bits 55:47 not
    "noncanonical": 0x8000000000001000,  # canonical at neither width
}
MSRS = {"fs_base": MSR_IA32_FS_BASE, "gs_base": MSR_IA32_GS_BASE, "kernel_gs_base": MSR_IA32_KERNEL_GS_BASE,
        "lstar": MSR_IA32_LSTAR, "cstar": MSR_IA32_CSTAR, "sysenter_esp": MSR_IA32_SYSENTER_ESP,
        "sysenter_eip": MSR_IA32_SYSENTER_EIP}
REGISTERS = ["gdtr", "idtr", "tr", "ldtr", *MSRS]
SEL = L.GDT_ENTRIES * 8     # the test's TSS or LDT descriptor (16 bytes)
BUF = L.DATA                # LGDT/LIDT operand; the saved and read-back tables at +0x10 and +0x20
PATHS = ["direct", "fep"]


def _vendor(kvm):
    e = next(e for e in kvm.cached_supported_cpuid() if e.function == 0)
    return e.ebx.to_bytes(4, "little") + e.edx.to_bytes(4, "little") + e.ecx.to_bytes(4, "little")


def _applies(kvm, register):
    # SDM Vol. 2B WRMSR lists IA32_SYSENTER_ESP/EIP among the MSRs that must hold a canonical address;
    # the APM gives AMD's SYSENTER MSRs no such check and the SDM has no CSTAR: each is checked for
    # the vendor whose manual defines the check (the vCPU's vendor is the host's, from KVM's table).
    intel = _vendor(kvm) == b"GenuineIntel"
    if register.startswith("sysenter") and not intel:
        return "the APM defines no canonical check for SYSENTER_ESP/EIP"
    if register == "cstar" and intel:
        return "the SDM defines no CSTAR"
    return None


def _expect_loaded(kvm, value_name):
    if value_name == "canonical48":
        return True
    return value_name == "canonical57" and has_feature(kvm.cached_supported_cpuid(), "la57")


def _source(register, value, loaded, fep):
    error_code = SEL if register in ("tr", "ldtr") else 0

    def attempt(insn):
        insn = forced_emulation.forced(insn, 64) if fep else insn
        return insn if loaded else f"GUEST_ASSERT_RAISES GP({error_code}), {insn}"

    if register in ("gdtr", "idtr"):
        op = register[0]
        return f"""
        mov rbx, {BUF:#x}
        s{op}dt [rbx + 0x10]
        mov word ptr [rbx], 0xfff
        mov rax, {value:#x}
        mov qword ptr [rbx + 2], rax
        {attempt(f"l{op}dt [rbx]")}
        s{op}dt [rbx + 0x20]
        l{op}dt [rbx + 0x10]
        mov rax, qword ptr [rbx + 0x22]
        GUEST_SYNC rax
        GUEST_DONE"""
    if register in ("tr", "ldtr"):
        return f"mov ax, {SEL:#x}\n{attempt('ltr ax' if register == 'tr' else 'lldt ax')}\nGUEST_DONE"
    return f"""
        mov ecx, {MSRS[register]:#x}
        rdmsr
        mov r8d, eax
        mov r9d, edx
        mov eax, {value & 0xFFFFFFFF:#x}
        mov edx, {value >> 32:#x}
        {attempt("wrmsr")}
        rdmsr
        shl rdx, 32
        or rax, rdx
        mov r10, rax
        mov eax, r8d
        mov edx, r9d
        wrmsr
        GUEST_SYNC r10
        GUEST_DONE"""


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value_name", list(VALUES))
@pytest.mark.parametrize("register", REGISTERS)
def test_linear_address_loaded_into_a_register_must_be_canonical(kvm, guest, mode, register, value_name, path):
    """LGDT, LIDT, LTR, LLDT or WRMSR with a base that is canonical at 48 bits loads it (SGDT, SIDT,
    RDMSR or KVM_GET_SREGS read it back); one canonical only at 57 bits loads only where LA57 is in
    the vCPU's CPUID; a non-canonical one raises #GP and leaves the register as it was."""
    reason = _applies(kvm, register)
    if reason:
        pytest.skip(reason)
    if path == "fep" and not forced_emulation.enabled():
        pytest.skip(forced_emulation.SKIP_REASON)
    value = VALUES[value_name]
    loaded = _expect_loaded(kvm, value_name)
    g = guest(mode, _source(register, value, loaded, path == "fep"))
    if register in ("tr", "ldtr"):
        kind = SYS_TYPE_TSS_AVAILABLE if register == "tr" else SYS_TYPE_LDT
        g.set_gdt_entry(SEL, D.Descriptor(base=value, limit=0x67, type=kind, s=0, db=0, g=0).encode_system64())
    before = g.vcpu.get_sregs()
    old = {"gdtr": L.GDT, "idtr": L.IDT}.get(register)
    if register in MSRS:
        old = g.vcpu.get_msr(MSRS[register])   # KVM_GET_MSRS: what the guest's RDMSR reads before
    synced = g.run_to_done()
    what = f"{register} <- {value:#x} ({value_name})"
    if register in ("tr", "ldtr"):
        seg = getattr(g.vcpu.get_sregs(), "tr" if register == "tr" else "ldt")
        old = getattr(before, "tr" if register == "tr" else "ldt")
        want = (SEL, value) if loaded else (old.selector, old.base)
        assert (seg.selector, seg.base) == want, \
            f"{what}: KVM_GET_SREGS reads selector {seg.selector:#x} base {seg.base:#x}, expected " \
            f"selector {want[0]:#x} base {want[1]:#x}"
        return
    (got,) = synced
    want = value if loaded else old
    assert got == want, f"{what}: the guest read back {got:#x}, expected {want:#x}"


@pytest.mark.modes(*MODES)
def test_changing_cr4_la57_in_ia32e_mode_raises_gp(guest, mode):
    """MOV to CR4 that flips LA57 while IA-32e mode is active raises #GP(0), whether or not the
    processor supports 5-level paging, and CR4 keeps its value (SDM Vol. 2B MOV CR, 64-Bit Mode
    Exceptions: "if an attempt is made to change CR4.LA57"; kvm-unit-tests la57's first check)."""
    g = guest(mode, f"mov rbx, cr4\nmov rax, rbx\nxor rax, {CR4_LA57:#x}\nGUEST_ASSERT_RAISES GP(0), mov cr4, rax\n"
                    "mov rax, cr4\nGUEST_SYNC rbx\nGUEST_SYNC rax\nGUEST_DONE")
    before, after = g.run_to_done()
    assert after == before, f"CR4 {after:#x} after the refused MOV; it was {before:#x}"
