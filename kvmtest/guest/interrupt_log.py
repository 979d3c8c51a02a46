"""Guest interrupt handlers that record each run, for tests of which interrupts arrive, in which
order and at which instruction boundary. The log is a dword count, then from +8 one 16-byte
(vector, saved RIP) record per run; each handler EOIs the local APIC (SDM Vol. 3A 11.8.5) and
returns with IRETQ, so it serves 64-bit guests that keep rbx = the xAPIC's base and rdi = the log."""

_HANDLER = """
v{vector:x}:
    mov eax, dword ptr [rdi]
    inc dword ptr [rdi]
    shl eax, 4
    mov qword ptr [rdi + rax + 8], {vector:#x}
    mov rdx, qword ptr [rsp]
    mov qword ptr [rdi + rax + 16], rdx
    mov dword ptr [rbx + 0xB0], 0               # EOI
    iretq
"""


def logging_handlers(vectors) -> str:
    """Guest source of one logging handler per vector, at label v<vector in hex> (e.g. v20)."""
    return "".join(_HANDLER.format(vector=v) for v in vectors)


def read_interrupt_log(vm, log: int, most: int = 8) -> list[tuple[int, int]]:
    """The (vector, saved RIP) records of the log at GPA `log`, the first `most` at most."""
    count = vm.read_u32(log)
    return [(vm.read_u64(log + 8 + 16 * i), vm.read_u64(log + 16 + 16 * i)) for i in range(min(count, most))]
