"""Every field of struct kvm_debugregs (db[0-3], dr6, dr7, flags) against what the guest wrote,
read or was given by the processor (api.rst 4.33/4.34 KVM_GET/SET_DEBUGREGS; SDM Vol. 3A
18.2 debug registers, 18.2.3 DR6 after a debug exception)."""

import errno

import pytest

from kvmtest.abi.constants import errno_name
from kvmtest.x86 import DR6_B0, DR6_B1, DR6_BS, DR6_INIT, DR7_GE, DR7_INIT, DR7_L0, DR7_LE, RFLAGS_TF

DR_VALUES = (0x0000_7F00_1111_1000, 0x0000_7F00_2222_2000, 0x0000_7F00_3333_3000, 0x0000_7F00_4444_4000)
DR6_WRITTEN = DR6_INIT | DR6_B0 | DR6_B1
DR7_WRITTEN = DR7_INIT | DR7_LE | DR7_GE     # no breakpoint enabled

READ_BACK = "\n".join(f"mov rax, dr{n}\nGUEST_SYNC rax" for n in (0, 1, 2, 3, 6, 7)) + "\nGUEST_DONE"
NAMES = ("db0", "db1", "db2", "db3", "dr6", "dr7")


def _reported(dbg):
    return dict(zip(NAMES, [*dbg.db, dbg.dr6, dbg.dr7], strict=True))


def test_debug_registers_the_guest_writes_are_what_get_debugregs_reports(guest):
    """MOV to DR0-DR3, DR6 and DR7 by the guest is what KVM_GET_DEBUGREGS reports at the next
    exit, and what the guest's own MOV from those registers reads (SDM Vol. 2B MOV DR; api.rst
    4.33)."""
    writes = "\n".join(f"mov rax, {v:#x}\nmov dr{n}, rax" for n, v in
                       zip((0, 1, 2, 3, 6, 7), (*DR_VALUES, DR6_WRITTEN, DR7_WRITTEN), strict=True))
    g = guest("long64", f"{writes}\nGUEST_SYNC 0\n{READ_BACK}")
    want = dict(zip(NAMES, (*DR_VALUES, DR6_WRITTEN, DR7_WRITTEN), strict=True))
    assert g.expect_sync() == 0
    reported = _reported(g.vcpu.get_debugregs())
    assert reported == want, f"KVM_GET_DEBUGREGS after the guest's MOV to DRn: {_hex(reported)}; written {_hex(want)}"
    seen = dict(zip(NAMES, g.run_to_done(), strict=True))
    assert seen == want, f"the guest read back {_hex(seen)}; it wrote {_hex(want)}"


def test_debug_registers_the_host_sets_are_what_the_guest_reads(guest):
    """DR0-DR3, DR6 and DR7 written with KVM_SET_DEBUGREGS are what the guest's MOV from DRn
    reads (api.rst 4.34; SDM Vol. 2B MOV DR)."""
    g = guest("long64", READ_BACK)
    dbg = g.vcpu.get_debugregs()
    dbg.db[:] = list(DR_VALUES)
    dbg.dr6, dbg.dr7, dbg.flags = DR6_WRITTEN, DR7_WRITTEN, 0
    g.vcpu.set_debugregs(dbg)
    want = dict(zip(NAMES, (*DR_VALUES, DR6_WRITTEN, DR7_WRITTEN), strict=True))
    seen = dict(zip(NAMES, g.run_to_done(), strict=True))
    assert seen == want, f"the guest read {_hex(seen)}; KVM_SET_DEBUGREGS wrote {_hex(want)}"


DB_CASES = {
    # single-step: TF set by POPF traps after the next instruction, DR6.BS (SDM 18.3.1.4)
    "single-step": (f"pushfq\nor qword ptr [rsp], {RFLAGS_TF:#x}\npopfq\nnop", DR6_INIT | DR6_BS),
    # the guest's own execute breakpoint in DR0, enabled by DR7.L0: a fault with DR6.B0 (SDM 18.3.1.1)
    "dr0-execute": (f"mov rax, target\nmov dr0, rax\nmov rax, {DR7_INIT | DR7_L0:#x}\nmov dr7, rax\ntarget: nop",
                    DR6_INIT | DR6_B0),
}


# MOV to DR0/DR7 needs CPL0, so at CPL3 the cause is the single step alone.
DB_RUNS = [("long64", "single-step"), ("long64", "dr0-execute"), ("long64-cpl3", "single-step")]
# The handler disarms DR0 before GUEST_DONE: QEMU's TCG before 9.1 keeps a breakpoint an SVM guest
# armed with MOV DR7 after VMEXIT and raises #DB at that address in every later guest of the session.


@pytest.mark.parametrize("mode,cause", DB_RUNS, ids=[f"{m}-{c}" for m, c in DB_RUNS])
def test_dr6_after_a_debug_exception_is_what_the_sdm_gives(guest, mode, cause):
    """After a #DB the guest takes itself (no KVM_SET_GUEST_DEBUG), DR6 holds the status bit of
    its cause on top of DR6's fixed bits (SDM Vol. 3A 18.2.3: 0xFFFF4FF0 after a single step
    from a clear DR6, 0xFFFF0FF1 after a DR0 breakpoint). The guest's #DB handler reads DR6 and
    KVM_GET_DEBUGREGS reports the same value at that handler's exit (api.rst 4.33)."""
    body, want = DB_CASES[cause]
    if mode.endswith("cpl3"):
        setup = ""
    else:
        setup = f"mov rax, {DR6_INIT:#x}\nmov dr6, rax\n"
    g = guest(mode, f"""
        {setup}{body}
        GUEST_FAIL "no #DB"
    db_handler:
    GUEST_AT_CPL 0
        mov rax, dr6
        GUEST_SYNC rax
        mov rax, {DR7_INIT:#x}
        mov dr7, rax
        GUEST_DONE""")
    if mode.endswith("cpl3"):
        dbg = g.vcpu.get_debugregs()
        dbg.dr6 = DR6_INIT
        g.vcpu.set_debugregs(dbg)
    g.set_idt_gate(1, "db_handler")
    guest_dr6 = g.expect_sync()
    kvm_dr6 = g.vcpu.get_debugregs().dr6
    assert (guest_dr6, kvm_dr6) == (want, want), \
        f"DR6 after the {cause} #DB ({mode}): the guest read {guest_dr6:#x}, KVM_GET_DEBUGREGS {kvm_dr6:#x}; " \
        f"expected {want:#x}"
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_DEBUGREGS")
def test_set_debugregs_with_flags_is_refused(vm):
    """kvm_debugregs.flags "is unused yet and must be cleared on entry" (api.rst 4.34):
    KVM_SET_DEBUGREGS with flags = 1 fails with EINVAL and leaves DR0 as it was; KVM_GET_DEBUGREGS
    reports flags = 0."""
    vcpu = vm.create_vcpu()
    dbg = vcpu.get_debugregs()
    assert dbg.flags == 0, f"KVM_GET_DEBUGREGS reports flags {dbg.flags:#x}; no flag is defined"
    dbg.db[0], dbg.flags = 0x1000, 1
    err = vcpu.try_set_debugregs(dbg)
    assert err == errno.EINVAL, f"KVM_SET_DEBUGREGS with flags=1: expected EINVAL, got {errno_name(err)}"
    assert vcpu.get_debugregs().db[0] == 0, "the refused KVM_SET_DEBUGREGS changed DR0"


def _hex(d):
    return "{" + ", ".join(f"{k}: {v:#x}" for k, v in d.items()) + "}"
