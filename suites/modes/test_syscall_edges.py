"""SYSCALL and SYSRET at their edges: SYSCALL with EFER.SCE clear, SYSRET with a 32-bit operand
size back to compatibility mode, and SYSCALL from compatibility mode, whose outcome depends on the
vendor the vCPU's CPUID names (SDM Vol. 2B SYSCALL, SYSRET; APM Vol. 3 SYSCALL, SYSRET).

The normal 64-bit SYSCALL/SYSRET round trip is in test_privilege.py. These guests learn where
they are from an exception frame instead of reading CS themselves: the #UD handler (64-bit, CPL0,
reached through the IDT) hands the saved RIP and CS to the host.
"""

import pytest

from kvmtest.cpuid import vendor
from kvmtest.guest import layout as L
from kvmtest.guest.fault_probe import expect_fault_at_probe, fault_probe_source, install_fault_probe
from kvmtest.x86 import EFER_SCE, MSR_IA32_CSTAR, MSR_IA32_FMASK, MSR_IA32_LSTAR, MSR_IA32_STAR, UD_VECTOR

# STAR[47:32]: SYSCALL's CS (SS = +8); STAR[63:48]: SYSRET's base: CS32 = base, SS = base + 8,
# CS64 = base + 16 (layout.py orders the GDT for exactly this).
STAR_VALUE = (L.SEL_USER_CODE32 << 48) | (L.SEL_CODE64 << 32)
AMD_COMPATIBLE = ("AuthenticAMD", "HygonGenuine")


def _msrs(g):
    sregs = g.vcpu.get_sregs()
    sregs.efer |= EFER_SCE
    g.set_sregs(sregs)
    g.vcpu.set_msrs({MSR_IA32_STAR: STAR_VALUE, MSR_IA32_LSTAR: g.labels["lstar_entry"],
                     MSR_IA32_CSTAR: g.labels["cstar_entry"], MSR_IA32_FMASK: 0})


@pytest.mark.modes(sample="per-code-size", protected=True, order="widest")
def test_syscall_with_efer_sce_clear_raises_ud(guest, mode):
    """With IA32_EFER.SCE = 0, SYSCALL raises #UD at itself, in every mode and at any CPL, on
    both vendors (SDM Vol. 2B SYSCALL: "#UD If IA32_EFER.SCE = 0"; APM Vol. 3 SYSCALL: #UD when
    EFER.SCE = 0)."""
    g = guest(mode, fault_probe_source(mode, "", "syscall"))
    install_fault_probe(g, UD_VECTOR)
    sregs = g.vcpu.get_sregs()
    sregs.efer &= ~EFER_SCE
    g.set_sregs(sregs)
    expect_fault_at_probe(g, UD_VECTOR, "SYSCALL with IA32_EFER.SCE = 0")


# After SYSRETL the user code runs `xor eax, eax` and the bytes 48 ff c0: DEC EAX; INC EAX in
# 32-bit code (EAX stays 0), INC RAX in 64-bit code (RAX = 1), so RAX tells which mode decoded them.
SYSRETL_TO_COMPAT = """
    mov ecx, user32
    mov r11, 0x2
    .byte 0x0f, 0x07                # SYSRET with 32-bit operand size (no REX.W)
.code32
user32:
    xor eax, eax
    .byte 0x48, 0xff, 0xc0
user_ud:
    ud2
.code64
ud_handler:
GUEST_AT_CPL 0
    GUEST_SYNC rax
    mov rax, qword ptr [rsp]
    GUEST_SYNC rax
    mov rax, qword ptr [rsp + 8]
    GUEST_SYNC rax
    mov rax, qword ptr [rsp + 32]
    GUEST_SYNC rax
    GUEST_DONE
lstar_entry:
cstar_entry:
    GUEST_FAIL "no SYSCALL was made"
"""


def test_sysretl_returns_to_compatibility_mode(guest):
    """SYSRET with a 32-bit operand size loads CS = IA32_STAR[63:48] | 3 with CS.L = 0
    (compatibility mode), SS = IA32_STAR[63:48] + 8 | 3 and RIP = ECX (SDM Vol. 2B SYSRET; APM
    Vol. 3 SYSRET): the code at ECX is decoded as 32-bit code at CPL3."""
    g = guest("long64", SYSRETL_TO_COMPAT, user_pages=True)
    _msrs(g)
    g.set_idt_gate(UD_VECTOR, "ud_handler")
    rax, rip, cs, ss = g.run_to_done()
    want_cs, want_ss = L.SEL_USER_CODE32 | 3, L.SEL_USER_DATA | 3
    got = {"saved CS": cs & 0xFFFF, "saved SS": ss & 0xFFFF, "saved RIP": rip, "RAX (decode witness)": rax}
    want = {"saved CS": want_cs, "saved SS": want_ss, "saved RIP": g.labels["user_ud"], "RAX (decode witness)": 0}
    assert got == want, (f"after SYSRETL the #UD frame and RAX are {({k: hex(v) for k, v in got.items()})}, expected "
                         f"{({k: hex(v) for k, v in want.items()})} (RAX 1 means the code ran as 64-bit code)")


SYSCALL_FROM_COMPAT = """
    mov ecx, 0x1234                 # SYSCALL overwrites it with the return address
syscall_insn:
    syscall
after_syscall:
    GUEST_FAIL "SYSCALL returned to the caller"
.code64
ud_handler:
GUEST_AT_CPL 0
    mov rax, qword ptr [rsp]
    GUEST_SYNC rax
    mov rax, qword ptr [rsp + 8]
    GUEST_SYNC rax
    GUEST_SYNC rcx
    GUEST_SYNC r11
    GUEST_DONE
cstar_entry:
    ud2
lstar_entry:
    ud2
"""


def test_syscall_from_compatibility_mode_follows_the_cpuid_vendor(kvm, guest):
    """SYSCALL from compatibility mode at CPL3 with EFER.SCE = 1: an AMD processor enters 64-bit
    mode at IA32_CSTAR with CS = IA32_STAR[47:32] (CPL0), RCX = the next RIP and R11 = RFLAGS
    (APM Vol. 3 SYSCALL); an Intel processor raises #UD at the SYSCALL (SDM Vol. 2B SYSCALL:
    "#UD ... The SYSCALL instruction is not recognized in compatibility mode"). The expectation
    follows the vendor in the vCPU's CPUID (KVM's own table here). The target raises #UD, whose
    frame tells where SYSCALL went."""
    g = guest("compat32-cpl3", SYSCALL_FROM_COMPAT)
    _msrs(g)
    g.set_idt_gate(UD_VECTOR, "ud_handler")
    rflags = g.vcpu.get_regs().rflags
    rip, cs, rcx, r11 = g.run_to_done()
    got = {"#UD at": rip, "saved CS": cs & 0xFFFF}
    cpu_vendor = vendor(kvm.cached_supported_cpuid())
    if cpu_vendor in AMD_COMPATIBLE:
        want = {"#UD at": g.labels["cstar_entry"], "saved CS": L.SEL_CODE64}
        got.update({"RCX": rcx, "R11": r11 & ~0x10000})  # RF is cleared in R11 (APM SYSCALL)
        want.update({"RCX": g.labels["after_syscall"], "R11": rflags & ~0x10000})
    else:
        want = {"#UD at": g.labels["syscall_insn"], "saved CS": L.SEL_USER_CODE32 | 3}
    assert got == want, (f"SYSCALL from compatibility mode, vCPU vendor {cpu_vendor}: "
                         f"{({k: hex(v) for k, v in got.items()})}, expected {({k: hex(v) for k, v in want.items()})}")
