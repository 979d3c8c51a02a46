"""A guest #DB handler that logs each debug exception, for checks of the guest's own breakpoints
and single-step traps (EFLAGS.TF, DR0-DR7 with no KVM_SET_GUEST_DEBUG).

For each #DB the handler records the saved RIP and DR6, then writes DR6 back to its initial value,
so that each record holds only its own exception's bits (SDM Vol. 3A 18.2.3: the processor never
clears DR6 itself). It can also set the saved RF, so that an instruction breakpoint, a fault,
does not hit again on return (18.3.1.1), and clear the saved TF to end single-stepping.

The log at GPA `log` (below 64 KiB for real-mode guests, which reach it with DS base 0): a count
of #DBs at +0, then from +16 one 16-byte record (saved RIP, DR6) for each of the first `slots`.
"""

from ..errors import BadArgumentError
from ..x86 import DB_VECTOR, DR6_BS, DR6_INIT, RFLAGS_RF, RFLAGS_TF

HANDLER = "db_log"   # the handler's label, which the IDT's #DB gate points at
RECORDS = 16         # where the records start, and each record's size


def db_logger(handler_bits: int, log: int, slots: int, *, stop: str | None = None, set_rf: bool = False) -> str:
    """Guest source of the #DB handler for an IDT of `handler_bits` (16, 32 or 64; a mode's
    `handler_bits`). It clears the saved TF at the #DB whose saved RIP is label `stop`, or at the
    first #DB when `stop` is None; with `set_rf` it sets the saved RF (not in 16-bit code, whose
    FLAGS image has no RF)."""
    if handler_bits == 16:
        at_stop = "" if stop is None else f"cmp word ptr [bp + 2], {stop}\n        jne db_log_out"
        if set_rf:
            raise BadArgumentError("db_logger: set_rf needs a 32- or 64-bit handler (a real-mode FLAGS image "
                                   "has no RF)")
        # EAX is saved whole: the handler moves DR6 through it, and the interrupted code may hold a
        # 32-bit value there.
        return f"""
db_log:
        push bp
        mov bp, sp
        push eax
        push bx
        mov bx, {log:#x}
        mov ax, word ptr [bx]
        inc word ptr [bx]
        cmp ax, {slots}
        jae db_log_full
        shl ax, 4
        add bx, ax
        mov ax, word ptr [bp + 2]
        mov word ptr [bx + {RECORDS}], ax
        mov eax, dr6
        mov dword ptr [bx + {RECORDS + 8}], eax
db_log_full:
        mov eax, {DR6_INIT:#x}
        mov dr6, eax
        {at_stop}
        and word ptr [bp + 6], ~{RFLAGS_TF:#x}
db_log_out:
        pop bx
        pop eax
        pop bp
        iret
"""
    if handler_bits not in (32, 64):
        raise BadArgumentError(f"db_logger: handler_bits {handler_bits!r}, expected 16, 32 or 64")
    a, b, sp, w, ptr, ret = (("rax", "rbx", "rsp", 8, "qword", "iretq") if handler_bits == 64
                             else ("eax", "ebx", "esp", 4, "dword", "iretd"))
    rip, rflags = f"{ptr} ptr [{sp} + {2 * w}]", f"{ptr} ptr [{sp} + {4 * w}]"   # above the two pushes
    rf = f"or {rflags}, {RFLAGS_RF:#x}" if set_rf else ""
    at_stop = "" if stop is None else f"mov {b}, {stop}\n        cmp {rip}, {b}\n        jne db_log_out"
    return f"""
{'.code64' if handler_bits == 64 else ''}
db_log:
        push {a}
        push {b}
        mov {b}, {log:#x}
        mov eax, dword ptr [{b}]
        inc dword ptr [{b}]
        cmp eax, {slots}
        jae db_log_full
        shl eax, 4
        add {a}, {b}
        mov {b}, {rip}
        mov {ptr} ptr [{a} + {RECORDS}], {b}
        mov {b}, dr6
        mov {ptr} ptr [{a} + {RECORDS + 8}], {b}
db_log_full:
        mov {b}, {DR6_INIT:#x}
        mov dr6, {b}
        {rf}
        {at_stop}
        and {rflags}, ~{RFLAGS_TF:#x}
db_log_out:
        pop {b}
        pop {a}
        {ret}
"""


def set_tf(code_bits: int) -> str:
    """Guest source (32- or 64-bit code) that sets EFLAGS.TF through PUSHF/POPF: the first
    single-step trap comes after the instruction that follows the POPF (SDM Vol. 3A 18.3.1.4)."""
    if code_bits not in (32, 64):
        raise BadArgumentError(f"set_tf: code_bits {code_bits!r}, expected 32 or 64")
    suffix, sp = ("q", "rsp") if code_bits == 64 else ("d", "esp")
    return f"pushf{suffix}\n    or dword ptr [{sp}], {RFLAGS_TF:#x}\n    popf{suffix}"


def install_db_logger(g, log: int, slots: int) -> None:
    """Zero the log and point the IDT's #DB gate at the handler (its source must be in `g`'s)."""
    g.vm.write(log, bytes(RECORDS + RECORDS * slots))
    g.set_idt_gate(DB_VECTOR, HANDLER)


def read_db_log(vm, log: int, slots: int) -> list[tuple[int, int]]:
    """The (saved RIP, DR6) records of the log at GPA `log`, at most `slots` of them."""
    count = vm.read_u32(log)
    return [(vm.read_u64(log + RECORDS * (i + 1)), vm.read_u64(log + RECORDS * (i + 1) + 8))
            for i in range(min(count, slots))]


def format_db_log(labels: dict[str, int], records) -> str:
    """The records for a failure message, each RIP by its label where one names it."""
    names = {v: k for k, v in labels.items()}
    return ", ".join(f"RIP {names.get(rip, hex(rip))} DR6 {dr6:#x}" for rip, dr6 in records) or "no #DB"


def expect_single_steps(g, log: int, slots: int, labels: list[str], what: str) -> None:
    """Require the log to hold one #DB at each of `labels` in order (the saved RIPs: a single-step
    trap comes after its instruction) and nothing else, each with DR6.BS set (SDM Vol. 3A
    18.3.1.4); a GuestFailure naming `what` and the records otherwise."""
    records = read_db_log(g.vm, log, slots)
    if [rip for rip, _ in records] != [g.labels[n] for n in labels]:
        raise g.failure(f"single-step #DBs {what}: {format_db_log(g.labels, records)}; expected one at each of "
                        f"{', '.join(labels)}")
    bad = [f"{dr6:#x}" for _, dr6 in records if not dr6 & DR6_BS]
    if bad:
        raise g.failure(f"single-step #DBs {what}: DR6 {', '.join(bad)} without BS (bit 14)")
