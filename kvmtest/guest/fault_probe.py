"""Does an instruction raise an exception, and where? A probe that needs no return from the handler.

GUEST_ASSERT_RAISES resumes the guest through its IRET, so a host that cannot run IRET in
16/32-bit protected mode fails every such check there whatever the instruction under test did.
A probe only needs to know whether the exception came and at which instruction: its handler
hands the saved instruction pointer (and error code) to the host and ends the guest.

    g = guest(mode, fault_probe_source(mode, "xor ecx, ecx", "rdtscp"))
    install_fault_probe(g, 6)
    outcome = probe_outcome(g, 6)   # ProbeOutcome(vector=6, faulted=True, rip=..., ...)

The handler runs at CPL0 in the IDT's code size (64-bit in compat32), reached through an
interrupt gate, so it works from CPL3 too.
"""

from dataclasses import dataclass

from ..errors import KvmtestError
from ..x86 import ERROR_CODE_VECTORS, vector_name
from .modes import get_mode

NO_EXCEPTION = 0x4E4F4E45        # GUEST_SYNC value of a probed instruction that completed
PROBE_LABEL = "kt_probe_insn"
HANDLER_LABEL = "kt_probe_handler"


def fault_probe_source(mode, setup: str, insn: str, after: str = "") -> str:
    """Guest source: `setup`, then `insn` at PROBE_LABEL, then `after` (e.g. GUEST_SYNCs of its
    results) and a GUEST_SYNC NO_EXCEPTION; plus the handler install_fault_probe points at."""
    m = get_mode(mode)
    if m.handler_bits == 16 or m.code_bits == 16:
        raise KvmtestError(f"fault probes need a 32- or 64-bit IDT and code; mode {m.name} has "
                           f"{m.code_bits}-bit code and a {m.handler_bits}-bit IDT")
    wide = m.handler_bits == 64
    a, sp, w = ("rax", "rsp", 8) if wide else ("eax", "esp", 4)
    switch = f".code{m.handler_bits}" if m.handler_bits != m.code_bits else ""
    return f"""
    {setup}
{PROBE_LABEL}:
    {insn}
    {after}
    GUEST_SYNC {NO_EXCEPTION:#x}
    GUEST_DONE
{switch}
{HANDLER_LABEL}:
GUEST_AT_CPL 0
    mov {a}, [{sp} + {w}]
    GUEST_SYNC {a}
    mov {a}, [{sp}]
    GUEST_SYNC {a}
    GUEST_DONE
"""


def install_fault_probe(g, vector: int) -> None:
    """Point IDT vector `vector` at the probe's handler. The handler syncs two words from its
    stack: for an exception without an error code those are CS and RIP, with one RIP and the
    error code (SDM Vol. 3A 6.12.1, 6.14.2)."""
    g.set_idt_gate(vector, HANDLER_LABEL)


@dataclass(frozen=True)
class ProbeOutcome:
    """What the probed instruction did: `faulted` with exception `vector` (the saved RIP, and the
    error code or the saved CS the handler found on its stack), or completed with the `after`
    GUEST_SYNC values in `results`."""
    vector: int
    faulted: bool
    rip: int | None = None          # saved instruction pointer of the exception
    error_code: int | None = None
    cs: int | None = None           # saved CS, for an exception without an error code
    results: tuple = ()             # the `after` GUEST_SYNCs when the instruction completed

    def __str__(self):
        if not self.faulted:
            results = [hex(v) for v in self.results]
            return f"no {vector_name(self.vector)}: the instruction completed (results {results})"
        code = "" if self.error_code is None else f"({self.error_code:#x})"
        cs = "" if self.cs is None else f", saved CS {self.cs & 0xFFFF:#x}"
        return f"{vector_name(self.vector)}{code} with saved RIP {self.rip:#x}{cs}"


def probe_outcome(g, vector: int) -> ProbeOutcome:
    """Run the probe (its handler installed for `vector`) to GUEST_DONE; any other exception
    fails the run as usual (the guest's default handlers report it with vector, error code and
    RIP)."""
    values = g.run_to_done()
    if values and values[-1] == NO_EXCEPTION:
        return ProbeOutcome(vector, False, results=tuple(values[:-1]))
    if len(values) != 2:
        raise KvmtestError(f"{g.name}: fault probe synced {[hex(v) for v in values]}, expected 2 values or "
                           f"results ending in {NO_EXCEPTION:#x}")
    upper, lower = values
    if vector in ERROR_CODE_VECTORS:
        return ProbeOutcome(vector, True, rip=upper, error_code=lower)
    return ProbeOutcome(vector, True, rip=lower, cs=upper)


def expect_fault_at_probe(g, vector: int, what: str) -> ProbeOutcome:
    """Run the probe and require exception `vector` at PROBE_LABEL (a fault: the saved RIP is the
    instruction itself, SDM Vol. 3A 6.5)."""
    outcome = probe_outcome(g, vector)
    want = g.labels[PROBE_LABEL]
    if not outcome.faulted or outcome.rip != want:
        raise g.failure(f"{what}: expected {vector_name(vector)} at {want:#x}, got {outcome}")
    return outcome
