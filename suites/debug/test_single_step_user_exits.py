"""Single-stepping across an instruction that user space finishes: OUT and IN (KVM_EXIT_IO), an
MMIO store and an MMIO load (KVM_EXIT_MMIO). The single-step trap comes after the instruction
completes, with RIP at the next instruction and DR6.BS set (SDM Vol. 3A 18.3.1.4), whether the
guest set RFLAGS.TF itself or the host asked for KVM_GUESTDBG_SINGLESTEP (api.rst 4.87
KVM_SET_GUEST_DEBUG, 5 KVM_EXIT_DEBUG). api.rst 5 (KVM_EXIT_IO/KVM_EXIT_MMIO note): such an
instruction is complete only once user space re-enters KVM_RUN, so that is where the trap is due."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import DebugExit, IoExit, MmioExit
from kvmtest.guest import layout as L
from kvmtest.guest.db_log import db_logger, expect_single_steps, install_db_logger
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import MODES
from kvmtest.guest.protocol import Done
from kvmtest.x86 import DB_VECTOR, DR6_BS, RFLAGS_TF

STEP_MODES = select(sample="per-code-size", cpl=0) + select(sample="per-code-size", long=True, cpl=3)
OUT_PORT, IN_PORT = 0x10, 0x11
IN_VALUE, LOAD_VALUE, STORE_VALUE = 0xA5, 0x8BADF00D, 0x600DCAFE
LOG = 0xA00                   # the #DB handler's record: count, then (RIP, DR6) per trap; below 64 KiB
LOG_SLOTS = 8
REAL_MEM = 0x20000            # real mode: RAM ends here, so ES = REAL_MMIO_SEG reaches unbacked memory
REAL_MMIO_SEG = 0x3000

# The instruction under test; _complete() answers the exit it makes (KVM_EXIT_IO or KVM_EXIT_MMIO).
OPS = {
    "out": f"out {OUT_PORT:#x}, al",
    "in": f"in al, {IN_PORT:#x}",
    "mmio-store": "mov dword ptr es:[{b}], eax",
    "mmio-load": "mov eax, dword ptr es:[{b}]",
}


def _es_base(mode):
    """Real mode reaches unbacked memory through ES; the other modes use flat segments."""
    return REAL_MMIO_SEG * 16 if not MODES[mode].protected else 0


def _mmio_address(mode):
    return _es_base(mode) + (0x40 if not MODES[mode].protected else L.MMIO_BASE + 0x40)


def _guest(guest, mode, op, handler=""):
    """s0 (a nop), then the op, `after` and `stop` (nops): a step trap is due after each."""
    b = "rbx" if MODES[mode].code_bits == 64 else "ebx"
    kw = {} if MODES[mode].protected else {"mem_size": REAL_MEM}
    g = guest(mode, f"""
        s0: nop
        op: {OPS[op].format(b=b)}
        after: nop
        stop: nop
        GUEST_DONE
        {handler}""", **kw)
    regs = g.vcpu.get_regs()
    regs.rax, regs.rbx = STORE_VALUE, _mmio_address(mode) - _es_base(mode)
    g.vcpu.set_regs(regs)
    if not MODES[mode].protected:
        sregs = g.vcpu.get_sregs()
        sregs.es.selector, sregs.es.base = REAL_MMIO_SEG, REAL_MMIO_SEG * 16
        g.set_sregs(sregs)
    return g


def _complete(g, mode, op, exit_):
    """Check the exit is the op's and supply what an IN or MMIO load reads."""
    where = f"{op} in {mode}"
    if op in ("out", "in"):
        assert isinstance(exit_, IoExit), f"{where}: expected KVM_EXIT_IO, got {exit_}"
        assert exit_.port == (OUT_PORT if op == "out" else IN_PORT), f"{where}: {exit_}"
        if op == "in":
            exit_.respond(IN_VALUE)
        else:
            assert exit_.value == STORE_VALUE & 0xFF, f"{where}: OUT wrote {exit_}, expected AL {STORE_VALUE & 0xFF:#x}"
        return
    assert isinstance(exit_, MmioExit), f"{where}: expected KVM_EXIT_MMIO, got {exit_}"
    assert exit_.phys_addr == _mmio_address(mode), f"{where}: {exit_} at the wrong address"
    if op == "mmio-load":
        exit_.respond(LOAD_VALUE)
    else:
        assert exit_.value == STORE_VALUE, f"{where}: {exit_}, expected data {STORE_VALUE:#x}"


def _names(g, rips):
    names = {v: k for k, v in g.labels.items() if k in ("s0", "op", "after", "stop")}
    return "[" + ", ".join(names.get(r, hex(r)) for r in rips) + "]"


@pytest.mark.requires_cap("KVM_CAP_SET_GUEST_DEBUG")
@pytest.mark.modes(*STEP_MODES)
@pytest.mark.parametrize("op", list(OPS))
def test_host_single_step_traps_after_an_instruction_user_space_completed(guest, mode, op):
    """With KVM_GUESTDBG_SINGLESTEP, the instruction that exited to user space (KVM_EXIT_IO or
    KVM_EXIT_MMIO) and was completed by the next KVM_RUN ends in its own KVM_EXIT_DEBUG: #DB,
    DR6.BS, pc = the instruction after it, with an IN's or load's data already in RAX; no
    instruction runs without a step exit (api.rst 4.87 KVM_SET_GUEST_DEBUG, 5 KVM_EXIT_DEBUG;
    SDM Vol. 3A 18.3.1.4: the trap follows the completed instruction)."""
    g = _guest(guest, mode, op)
    g.vcpu.set_guest_debug(C.KVM_GUESTDBG_ENABLE | C.KVM_GUESTDBG_SINGLESTEP)
    want = [g.labels[n] for n in ("op", "after", "stop")]
    pcs, rax_after_op = [], None
    for _ in range(8):
        exit_ = g.run()
        if isinstance(exit_, DebugExit):
            assert exit_.exception == DB_VECTOR and exit_.dr6 & DR6_BS, \
                f"{op} in {mode}: {exit_}, expected #DB with DR6.BS (single step)"
            pcs.append(exit_.pc)
            if exit_.pc == g.labels["after"]:
                rax_after_op = g.vcpu.get_regs().rax   # host-side read-back right at the exit
            if exit_.pc == g.labels["stop"]:
                break
        else:
            _complete(g, mode, op, exit_)
    assert pcs == want, \
        f"single-step {op} in {mode}: KVM_EXIT_DEBUG pcs {_names(g, pcs)}, expected [op, after, stop] " \
        f"({[hex(p) for p in pcs]} vs {[hex(p) for p in want]}): a missing `after` means no trap for the " \
        "instruction user space completed"
    if op in ("in", "mmio-load"):
        want_rax = IN_VALUE if op == "in" else LOAD_VALUE
        mask = 0xFF if op == "in" else 0xFFFFFFFF
        assert rax_after_op is not None and rax_after_op & mask == want_rax, \
            f"{op} in {mode}: RAX at the step exit after it (KVM_GET_REGS) {rax_after_op!r}, expected {want_rax:#x}"
    g.vcpu.set_guest_debug(0)
    g.run_to_done()


@pytest.mark.modes(*STEP_MODES)
@pytest.mark.parametrize("op", list(OPS))
def test_guest_single_step_traps_after_an_instruction_user_space_completed(guest, mode, op):
    """With the guest's own RFLAGS.TF (set through KVM_SET_REGS, no KVM_SET_GUEST_DEBUG), each
    instruction ends in a #DB that the guest's handler takes with the saved RIP at the next
    instruction and DR6.BS set, including the instruction user space completed after
    KVM_EXIT_IO / KVM_EXIT_MMIO (SDM Vol. 3A 18.3.1.4 and 6.15 "Interrupt 1": a trap, after the
    instruction)."""
    g = _guest(guest, mode, op, db_logger(MODES[mode].handler_bits, LOG, LOG_SLOTS, stop="stop"))
    install_db_logger(g, LOG, LOG_SLOTS)
    regs = g.vcpu.get_regs()
    regs.rflags |= RFLAGS_TF
    g.vcpu.set_regs(regs)
    while True:
        exit_ = g.run()
        if isinstance(exit_, (IoExit, MmioExit)):
            _complete(g, mode, op, exit_)
            continue
        break
    assert isinstance(exit_, Done), f"{op} in {mode}: expected GUEST_DONE, got {exit_}"
    expect_single_steps(g, LOG, LOG_SLOTS, ["op", "after", "stop"],
                        f"of the guest's TF over {op} in {mode} (a missing `after` means no trap for the instruction "
                        "user space completed)")
