"""What one path saw after the instruction, and the side-by-side comparison of every path's.

Compared: the exception (vector; error code where both paths know it), the general-purpose
registers (64 bits in 64-bit code, the low 32 in 16/32-bit code, where the upper halves are not
architecturally visible), the status flags the SDM defines after this instruction, the operand
page's bytes, and where a path can see them the memory writes in order (address, size, bytes):
KVM_EXIT_MMIO writes on the MMIO paths, Unicorn's write hooks on the reference.
"""

from dataclasses import dataclass, field

from ..x86 import vector_name
from .inputs import PAGE, Inputs
from .instruction import STATUS_FLAGS, Instruction, defined_flags, flag_names, undefined_flags

GPRS_64 = ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
GPRS_32 = ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi")


def gpr_names(code_bits: int) -> tuple[str, ...]:
    """The registers compared in `code_bits` code (RSP is the harness's: the guest's stack)."""
    return GPRS_64 if code_bits == 64 else GPRS_32


@dataclass(frozen=True)
class Write:
    """One memory access: its address and bytes (a write's data, or what a read returned)."""

    address: int
    data: bytes

    def __str__(self):
        return f"{len(self.data)}@{self.address:#x}={self.data.hex()}"


@dataclass(frozen=True)
class Outcome:
    """One path's result. `writes` is None where the path cannot see individual writes (RAM)."""
    gprs: dict[str, int]
    rflags: int
    page: bytes
    writes: tuple[Write, ...] | None = None
    exception: tuple[int, int | None] | None = None   # (vector, error code or None if unknown)
    error: str | None = None   # the path did not finish the instruction (an unexpected exit, say)
    reads: tuple[Write, ...] = field(default=(), compare=False)   # MMIO reads, shown, not compared
    # Facts of this outcome left out of the comparison, each with why (a known deviation of the
    # reference model, kvmtest.differential.reference.KNOWN_DEVIATIONS): fact name -> reason.
    unchecked: tuple[tuple[str, str], ...] = field(default=(), compare=False)


def _view(insn: Instruction, code: bytes, o: Outcome) -> dict[str, str]:
    """The compared facts of one outcome, rendered; equal strings mean agreement."""
    if o.error:
        return {"error": o.error}
    bits = insn.form.code_bits
    width = (1 << 64) - 1 if bits == 64 else 0xFFFFFFFF
    # After a fault the instruction left no result, so every status flag must be as it was.
    defined = STATUS_FLAGS if o.exception else defined_flags(code, bits)
    view = {"error": "none", "exception": "none" if o.exception is None else vector_name(o.exception[0])}
    for name in gpr_names(bits):
        view[name] = f"{o.gprs[name] & width:#x}"
    view["flags"] = flag_names(o.rflags & defined)
    for fact, _ in o.unchecked:
        view.pop(fact, None)
    return view


def _page_diff(a: bytes, b: bytes) -> str:
    diffs = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
    if not diffs:
        return ""
    lo, hi = diffs[0], diffs[-1] + 1
    return f"bytes {PAGE + lo:#x}-{PAGE + hi - 1:#x}: {a[lo:hi].hex()} vs {b[lo:hi].hex()}"


def disagreements(insn: Instruction, code: bytes, outcomes: dict[str, Outcome]) -> list[tuple[str, dict[str, str]]]:
    """Each compared fact on which the paths do not all agree, with every path's value; [] when
    they agree. Exception error codes are compared between paths that know them; write sequences
    between paths that see them; the page bytewise."""
    rows = []
    views = {name: _view(insn, code, o) for name, o in outcomes.items()}
    keys = list(dict.fromkeys(k for v in views.values() for k in v))
    for key in keys:
        values = {name: v[key] for name, v in views.items() if key in v}
        if len(set(values.values())) > 1:
            rows.append((key, {name: v.get(key, "n/c") for name, v in views.items()}))
    finished = {n: o for n, o in outcomes.items() if not o.error}
    codes = {n: o.exception[1] for n, o in finished.items() if o.exception and o.exception[1] is not None}
    if len(set(codes.values())) > 1:
        rows.append(("error code", {n: f"{c:#x}" if c is not None else "?" for n, c in codes.items()}))
    pages = {n: o.page for n, o in finished.items()}
    if len(set(pages.values())) > 1:
        first = next(iter(pages))
        rows.append(("memory", {n: _page_diff(pages[first], p) or "same" if n != first else "(baseline)"
                                for n, p in pages.items()}))
    writes = {n: o.writes for n, o in finished.items() if o.writes is not None}
    if len(set(writes.values())) > 1:
        rows.append(("writes", {n: " ".join(map(str, w)) or "none" for n, w in writes.items()}))
    return rows


def groups(insn: Instruction, code: bytes, outcomes: dict[str, Outcome]) -> list[list[str]]:
    """Paths that agree with each other on every fact both compare, largest group first (each path
    joins the first group whose first member it agrees with)."""
    def agree(a: str, b: str) -> bool:
        return not disagreements(insn, code, {a: outcomes[a], b: outcomes[b]})

    found: list[list[str]] = []
    for name in outcomes:
        for group in found:
            if agree(group[0], name):
                group.append(name)
                break
        else:
            found.append([name])
    return sorted(found, key=len, reverse=True)


def report(insn: Instruction, code: bytes, inputs: Inputs, outcomes: dict[str, Outcome],
           rows: list[tuple[str, dict[str, str]]], attribution: str) -> str:
    """The failure message: instruction, inputs, the disagreeing facts side by side, who agrees."""
    form = insn.form
    names = list(outcomes)
    width = max(14, *(len(n) for n in names), *(len(v) for key, values in rows for v in values.values()
                                                 if key not in ("memory", "writes")))
    lines = [f"{form.text} ({code.hex()}) in {form.code_bits}-bit code: the paths disagree",
             f"  inputs: {inputs!r}; RBX={inputs.address:#x}; flags the SDM leaves undefined here "
             f"(iced-x86, not compared): {flag_names(undefined_flags(code, form.code_bits))}",
             "  " + " " * 12 + "".join(n.ljust(width + 2) for n in names)]
    for key, values in rows:
        if key in ("memory", "writes"):
            lines.append(f"  {key}:")
            lines += [f"    {n}: {values.get(n, '-')}" for n in names]
        else:
            lines.append(f"  {key:<12}" + "".join(values.get(n, "-").ljust(width + 2) for n in names))
    for name, o in outcomes.items():
        for fact, why in o.unchecked:
            lines.append(f"  {name} {fact} not compared: {why}")
        if o.reads or o.writes:
            accesses = [f"R {r}" for r in o.reads] + [f"W {w}" for w in o.writes or ()]
            lines.append(f"  {name} accesses: {', '.join(accesses)}")
    lines.append(f"  {attribution}")
    return "\n".join(lines)
