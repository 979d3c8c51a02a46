"""System-management mode: an SMI (KVM_SMI, api.rst 4.96) enters SMM with the architectural initial
state, and RSM returns to the interrupted code with its state restored (SDM Vol. 3C 32.5.1 Table 32-4,
32.5.2 and RSM in Vol. 2B; AMD APM Vol. 2 10.3.3 "SMM Initial State" and 10.3.4). Peer: selftests
x86/smm_test (entry, SMRAM, RSM). A vCPU in SMM uses the memslots of address space 1 (api.rst 4.35:
bits 16-31 of the slot id), so the guest's RAM is mapped there too, as SMRAM aliasing it.
"""

import pytest

from kvmtest.exits import IntrExit, IoExit
from kvmtest.x86 import CR0_EM, CR0_PE, CR0_PG, CR0_TS, EFER_LMA

pytestmark = pytest.mark.requires_cap("KVM_CAP_X86_SMM")

SMBASE = 0x30000                  # the default SMBASE (SDM 32.5.1, APM 10.3.3)
ENTRY = SMBASE + 0x8000           # SMM is entered at SMBASE + 8000H
MARKER = 0x5A17C0DE
CLOBBER = 0xDEADF00D
# 16-bit SMM code at ENTRY: OUT 0x10, AL (an exit, to look at SMM's state); MOV EBX, CLOBBER; RSM
HANDLER = bytes([0xE6, 0x10, 0x66, 0xBB]) + CLOBBER.to_bytes(4, "little") + bytes([0x0F, 0xAA])
OUT_LENGTH = 2
FLAT = 0xFFFF_FFFF


def _with_smram(g):
    """Address space 1 aliasing the guest's RAM, and the SMM handler at SMBASE + 8000H."""
    assert g.kvm.check_extension("KVM_CAP_MULTI_ADDRESS_SPACE") >= 2, \
        "KVM_CAP_X86_SMM without a second address space (KVM_CAP_MULTI_ADDRESS_SPACE < 2) for SMRAM"
    ram = g.vm.memslot(0)
    g.vm.add_memory(ram.gpa, ram.size, slot=1 << 16, mapping=ram.mapping, offset=ram.offset)
    g.vm.write(ENTRY, HANDLER)


@pytest.mark.modes("real", "pm32", "pae", "long64", "compat32", "long64-cpl3", "pm32-cpl3")
def test_smi_enters_smm_in_its_initial_state_and_rsm_restores_the_interrupted_one(guest, mode):
    """KVM_SMI, then KVM_RUN: the SMI is taken at the next instruction boundary and the vCPU runs
    SMBASE + 8000H in SMM (smi.smm = 1, api.rst 4.31) with CS selector SMBASE >> 4, CS base SMBASE,
    CS limit 0FFFFFFFFH; DS, ES, FS, GS, SS selector 0, base 0, limit 0FFFFFFFFH; CR0.PE, EM, TS and
    PG clear and CR0's other bits unmodified; CR4 0; RFLAGS 2; DR7 400H (Table 32-4; APM 10.3.3), and
    so IA32_EFER.LMA 0 (read once the handler's first instruction, an OUT, is complete). The handler
    clobbers EBX and executes RSM, which restores the interrupted
    context from the state save area (32.5.2, RSM): the guest goes on at its next instruction with its
    EBX, control registers, EFER and segments as they were, out of SMM (smi.smm = 0)."""
    g = guest(mode, f"mov ebx, {MARKER:#x}\nGUEST_SYNC 1\nGUEST_SYNC ebx\nGUEST_DONE")
    _with_smram(g)
    assert g.expect_sync() == 1
    before = g.vcpu.get_sregs()
    g.vcpu.smi()
    g.expect_exit(IoExit, port=0x10)
    # An OUT is complete, and RIP past it, only once KVM_RUN is entered again; with immediate_exit set
    # KVM completes it and returns EINTR before the next instruction (api.rst 5, "immediate_exit").
    g.vcpu.kvm_run.immediate_exit = 1
    assert isinstance(completed := g.vcpu.run(), IntrExit), f"KVM_RUN with immediate_exit: got {completed}"
    sregs, regs, dr7 = g.vcpu.get_sregs(), g.vcpu.get_regs(), g.vcpu.get_debugregs().dr7
    expected = {
        "smi.smm": 1, "cs": (SMBASE >> 4, SMBASE, FLAT), "rip": 0x8000 + OUT_LENGTH, "rflags": 0x2,
        "cr0": before.cr0 & ~(CR0_PE | CR0_EM | CR0_TS | CR0_PG), "cr4": 0, "efer.lma": 0, "dr7": 0x400,
        **{s: (0, 0, FLAT) for s in ("ds", "es", "fs", "gs", "ss")},
    }
    observed = {
        "smi.smm": g.vcpu.get_events().smi.smm,
        "cs": (sregs.cs.selector, sregs.cs.base, sregs.cs.limit), "rip": regs.rip, "rflags": regs.rflags,
        "cr0": sregs.cr0, "cr4": sregs.cr4, "efer.lma": int(bool(sregs.efer & EFER_LMA)), "dr7": dr7,
        **{s: (getattr(sregs, s).selector, getattr(sregs, s).base, getattr(sregs, s).limit)
           for s in ("ds", "es", "fs", "gs", "ss")},
    }
    wrong = {k: f"expected {_fmt(v)}, got {_fmt(observed[k])}" for k, v in expected.items() if observed[k] != v}
    assert not wrong, f"{mode}: state on SMM entry (SDM Table 32-4, APM 10.3.3): {wrong}"

    assert g.expect_sync() == MARKER, f"{mode}: EBX after RSM is not the interrupted code's {MARKER:#x}"
    after = g.vcpu.get_sregs()
    fields = ("cr0", "cr3", "cr4", "efer")
    changed = {f: f"{getattr(before, f):#x} -> {getattr(after, f):#x}" for f in fields
               if getattr(before, f) != getattr(after, f)}
    for seg in ("cs", "ss", "ds"):
        b, a = getattr(before, seg), getattr(after, seg)
        if (b.selector, b.base, b.limit, b.l, b.db, b.dpl) != (a.selector, a.base, a.limit, a.l, a.db, a.dpl):
            changed[seg] = f"{b!r} -> {a!r}"
    assert not changed, f"{mode}: RSM did not restore the interrupted state: {changed}"
    assert g.vcpu.get_events().smi.smm == 0, f"{mode}: smi.smm still 1 after RSM"
    g.run_to_done()


def _fmt(value) -> str:
    return f"({', '.join(f'{v:#x}' for v in value)})" if isinstance(value, tuple) else f"{value:#x}"
