"""What one path saw after the instruction, and the side-by-side comparison of every path's.

Compared: the exception (vector; error code where both paths know it), the general-purpose
registers (64 bits in 64-bit code, the low 32 in 16/32-bit code, where the upper halves are not
architecturally visible), the status flags the SDM defines after this instruction, XMM1 where it is
an operand, RSP (as the distance moved) and the stack around it for PUSH/POP, the memory window's
bytes, and where a path can see them the memory writes to the operand page in order (address, size,
bytes): KVM_EXIT_MMIO writes on the MMIO paths, Unicorn's write hooks on the reference. A register
the SDM leaves undefined for the inputs (sdm_undefined) is left out, as undefined flags are.
"""

from dataclasses import dataclass, field

from ..x86 import vector_name
from .forms import Form
from .inputs import WINDOW, Inputs
from .instruction import STATUS_FLAGS, Instruction, defined_flags, flag_names, undefined_flags

GPRS_64 = ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
GPRS_32 = ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi")
WIDE = ("memory", "writes", "stack")   # facts the failure message puts one path a line


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


def sdm_undefined(form: Form, inputs: Inputs) -> tuple[str, ...]:
    """Registers whose value after `form` with `inputs` the SDM leaves undefined: BSF/BSR's
    destination when the source is 0 (SDM Vol. 2A BSF, BSR: "the content of the destination operand
    is undefined"; AMD's APM keeps it unchanged, Intel processors write it in part). The source is
    the memory operand, or the register in ModRM.rm (RDX, also the destination of `bsf edx, edx`)."""
    if form.mnemonic in ("bsf", "bsr"):
        source = inputs.mem if form.memory else inputs.rdx   # BSF/BSR's register source is RDX (rm_reg)
        if source & ((1 << form.size) - 1) == 0:
            return ("rdx",) if form.shape == "gg" else ("rcx",)
    return ()


@dataclass(frozen=True)
class Outcome:
    """One path's result. `writes` is None where the path cannot see individual writes (RAM)."""
    gprs: dict[str, int]
    rflags: int
    window: bytes     # the memory window (kvmtest.differential.inputs.WINDOW) after the instruction
    writes: tuple[Write, ...] | None = None
    exception: tuple[int, int | None] | None = None   # (vector, error code or None if unknown)
    error: str | None = None   # the path did not finish the instruction (an unexpected exit, say)
    exit: str | None = None    # with error: the KVM exit that ended the run (KVM_EXIT_INTERNAL_ERROR, ...)
    xmm: int | None = None     # XMM1 afterwards (forms with an XMM operand)
    rsp: int | None = None     # RSP afterwards minus RSP before
    stack: bytes | None = None  # the STACK_WINDOW bytes around the starting RSP afterwards
    reads: tuple[Write, ...] = field(default=(), compare=False)   # MMIO reads, shown, not compared
    # Facts of this outcome left out of the comparison, each with why (a known deviation of the
    # reference model, kvmtest.differential.reference.KNOWN_DEVIATIONS): fact name -> reason.
    unchecked: tuple[tuple[str, str], ...] = field(default=(), compare=False)


def _view(insn: Instruction, code: bytes, o: Outcome, undefined: tuple[str, ...] = ()) -> dict[str, str]:
    """The compared facts of one outcome, rendered; equal strings mean agreement."""
    if o.error:
        return {"error": o.exit or o.error}
    if _ignored(o):
        return {}
    form = insn.form
    bits = form.code_bits
    width = (1 << 64) - 1 if bits == 64 else 0xFFFFFFFF
    # After a fault the instruction left no result, so every status flag must be as it was.
    defined = STATUS_FLAGS if o.exception else defined_flags(code, bits)
    view = {"error": "none", "exception": "none" if o.exception is None else vector_name(o.exception[0])}
    for name in gpr_names(bits):
        view[name] = f"{o.gprs[name] & width:#x}"
    view["flags"] = flag_names(o.rflags & defined)
    if form.uses_xmm:
        view["xmm1"] = f"{o.xmm:#034x}" if o.xmm is not None else "?"
    if form.family == "stack":
        view["rsp"] = f"{o.rsp:+#x}" if o.rsp is not None else "?"
        if not o.exception:   # an exception frame at CPL0 lands on this stack, at CPL3 on another
            view["stack"] = o.stack.hex() if o.stack is not None else "?"
    for fact in undefined:
        view.pop(fact, None)
    for fact, _ in o.unchecked:
        view.pop(fact, None)
    return view


def _ignored(o: Outcome) -> bool:
    """Whether a known deviation leaves the whole of this outcome out of the comparison."""
    return any(fact == "outcome" for fact, _ in o.unchecked)


def _window_diff(a: bytes, b: bytes) -> str:
    diffs = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
    if not diffs:
        return ""
    lo, hi = diffs[0], diffs[-1] + 1
    return f"bytes {WINDOW + lo:#x}-{WINDOW + hi - 1:#x}: {a[lo:hi].hex()} vs {b[lo:hi].hex()}"


def disagreements(insn: Instruction, code: bytes, outcomes: dict[str, Outcome],
                  undefined: tuple[str, ...] = ()) -> list[tuple[str, dict[str, str]]]:
    """Each compared fact on which the paths do not all agree, with every path's value; [] when
    they agree. Exception error codes are compared between paths that know them; write sequences
    between paths that see them; the memory window bytewise. `undefined`: registers not compared
    (sdm_undefined)."""
    rows = []
    views = {name: _view(insn, code, o, undefined) for name, o in outcomes.items()}
    keys = list(dict.fromkeys(k for v in views.values() for k in v))
    for key in keys:
        values = {name: v[key] for name, v in views.items() if key in v}
        if len(set(values.values())) > 1:
            rows.append((key, {name: v.get(key, "n/c") for name, v in views.items()}))
    finished = {n: o for n, o in outcomes.items() if not o.error and not _ignored(o)}
    codes = {n: o.exception[1] for n, o in finished.items() if o.exception and o.exception[1] is not None}
    if len(set(codes.values())) > 1:
        rows.append(("error code", {n: f"{c:#x}" if c is not None else "?" for n, c in codes.items()}))
    windows = {n: o.window for n, o in finished.items()}
    if len(set(windows.values())) > 1:
        first = next(iter(windows))
        rows.append(("memory", {n: _window_diff(windows[first], w) or "same" if n != first else "(baseline)"
                                for n, w in windows.items()}))
    writes = {n: o.writes for n, o in finished.items() if o.writes is not None}
    if len(set(writes.values())) > 1:
        rows.append(("writes", {n: " ".join(map(str, w)) or "none" for n, w in writes.items()}))
    return rows


def groups(insn: Instruction, code: bytes, outcomes: dict[str, Outcome],
           undefined: tuple[str, ...] = ()) -> list[list[str]]:
    """Paths that agree with each other on every fact both compare, largest group first (each path
    joins the first group all of whose members it agrees with: a RAM path, which shows no writes,
    agrees with paths whose writes differ)."""
    def agree(a: str, b: str) -> bool:
        return not disagreements(insn, code, {a: outcomes[a], b: outcomes[b]}, undefined)

    found: list[list[str]] = []
    for name in outcomes:
        for group in found:
            if all(agree(member, name) for member in group):
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
                                                 if key not in WIDE))
    base = f"; {form.base.upper()}={inputs.address:#x}" if form.base else ""
    lines = [f"{form.text} ({code.hex()}) in {form.code_bits}-bit code: the paths disagree",
             f"  inputs: {inputs!r}{base}; flags the SDM leaves undefined here "
             f"(iced-x86, not compared): {flag_names(undefined_flags(code, form.code_bits))}"
             + "".join(f"; {r} undefined here (SDM), not compared" for r in sdm_undefined(form, inputs)),
             "  " + " " * 12 + "".join(n.ljust(width + 2) for n in names)]
    for key, values in rows:
        if key in WIDE:
            lines.append(f"  {key}:")
            lines += [f"    {n}: {values.get(n, '-')}" for n in names]
        else:
            lines.append(f"  {key:<12}" + "".join(values.get(n, "-").ljust(width + 2) for n in names))
    for name, o in outcomes.items():
        for fact, why in o.unchecked:
            what = "ran rewritten bytes" if fact == "code" else f"{fact} not compared"
            lines.append(f"  {name} {what}: {why}")
        if o.exit:
            lines.append(f"  {name} ended with {o.error}")
        if o.reads or o.writes:
            accesses = [f"R {r}" for r in o.reads] + [f"W {w}" for w in o.writes or ()]
            lines.append(f"  {name} accesses: {', '.join(accesses)}")
    lines.append(f"  {attribution}")
    return "\n".join(lines)
