"""The guest/host protocol: guest code tells the host what happened with one access.

Each command has its own channel, so a protocol site clobbers no register and no flag.
At CPL0 (and in real mode) the channel is an I/O port: `out PORT, al`. At CPL3 an OUT
needs IOPL 3 or an I/O bitmap, so there the channel is a byte store to the unbacked page
layout.PROTOCOL_MMIO (offset = PORT - 0xE0), which exits as KVM_EXIT_MMIO at any CPL.
The host identifies the site by the RIP of the exit (at the instruction or after it;
each site is a `nop` plus the access, so no two sites share either address), reads the
values it needs from the vCPU's registers or from the site's recorded operands, and
resumes the guest.

Commands (written as macros in guest source, see kvmtest.guest.compose):
  GUEST_DONE                      the guest finished; it halts if resumed
  GUEST_SYNC value                hand `value` (register, number or symbol) to the host
  GUEST_ASSERT_EQ a, b            the host compares a and b; a mismatch fails the test
                                  with the source line and both values
  GUEST_PRINT "text"              the host collects the text
  GUEST_FAIL "text"               fail the test here
  GUEST_ASSERT_RAISES V[(ec)], insn   run insn, expecting exception V (with error code ec)
  GUEST_AT_CPL 0|3                the following code runs at this CPL (after the guest changed it)
Exception handlers report unexpected exceptions on PORT_EXCEPTION with vector in RBX,
error code in RCX, RIP in RDX and CR2 in RSI.
Ports 0xE0-0xE7 are the protocol's; tests use other ports.
"""

import re
from dataclasses import dataclass

from ..abi import constants as C
from ..abi.structs import kvm_regs, kvm_sregs

PORT_DONE = 0xE0
PORT_SYNC = 0xE1
PORT_ASSERT = 0xE2
PORT_PRINT = 0xE3
PORT_EXCEPTION = 0xE4
PORT_FAIL = 0xE5
PORT_CHECK_EXCEPTION = 0xE6
PROTOCOL_PORTS = frozenset(range(0xE0, 0xE8))

SITE_PREFIX = "__kt_site_"


@dataclass(frozen=True)
class Site:
    """One protocol macro in the guest source."""

    kind: str                 # done, sync, assert_eq, print, fail, check_exception
    origin: str               # file:line
    text: str                 # the macro as written
    operands: tuple = ()
    port: int = 0
    length: int = 2  # bytes of the protocol instruction (OUT imm8: 2; MOV [disp32], AL: 6 or 7)


@dataclass(frozen=True)
class Sync:
    value: int
    site: Site

    def __str__(self):
        return f"GUEST_SYNC({self.value:#x}) at {self.site.origin}"


@dataclass(frozen=True)
class Done:
    site: Site | None = None

    def __str__(self):
        return "GUEST_DONE"


# --- operand evaluation on the host ---------------------------------------------------------

_GPR64 = "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15".split()
_SUBREGS = {}
for _i, _r in enumerate(["ax", "bx", "cx", "dx"]):
    _SUBREGS.update({f"e{_r}": (f"r{_r}", 0, 32), _r: (f"r{_r}", 0, 16), f"{_r[0]}l": (f"r{_r}", 0, 8),
                     f"{_r[0]}h": (f"r{_r}", 8, 8)})
for _r in ["si", "di", "sp", "bp"]:
    _SUBREGS.update({f"e{_r}": (f"r{_r}", 0, 32), _r: (f"r{_r}", 0, 16), f"{_r}l": (f"r{_r}", 0, 8)})
for _n in range(8, 16):
    _SUBREGS.update({f"r{_n}d": (f"r{_n}", 0, 32), f"r{_n}w": (f"r{_n}", 0, 16), f"r{_n}b": (f"r{_n}", 0, 8)})
_SREG_FIELDS = {"cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"}
_SEGMENTS = {"cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"}


class OperandError(ValueError):
    pass


def is_register(name: str) -> bool:
    name = name.lower()
    return name in _GPR64 or name in _SUBREGS or name in ("rip", "eip", "ip", "rflags", "eflags", "flags") \
        or name in _SREG_FIELDS or name in _SEGMENTS


def evaluate(operand: str, regs: kvm_regs, sregs: kvm_sregs | None, symbols: dict[str, int]) -> int:
    """The value of a macro operand: a register, a number, a symbol, or a +/- sum of those."""
    text = operand.strip()
    terms = re.findall(r"([+-]?)\s*([^+\-\s][^+\-]*)", text)
    if not terms:
        raise OperandError(f"empty operand {operand!r}")
    total = 0
    for sign, term in terms:
        value = _term(term.strip(), regs, sregs, symbols)
        total = total - value if sign == "-" else total + value
    return total


def _term(term: str, regs, sregs, symbols) -> int:
    low = term.lower()
    if low in _GPR64:
        return getattr(regs, low)
    if low in _SUBREGS:
        reg, shift, bits = _SUBREGS[low]
        return (getattr(regs, reg) >> shift) & ((1 << bits) - 1)
    if low in ("rip", "eip", "ip"):
        return regs.rip
    if low in ("rflags", "eflags", "flags"):
        return regs.rflags
    if low in _SREG_FIELDS and sregs is not None:
        return getattr(sregs, low)
    if low in _SEGMENTS and sregs is not None:
        return getattr(sregs, low).selector
    if term in symbols:
        return symbols[term]
    try:
        return int(term, 0)
    except ValueError:
        raise OperandError(f"cannot evaluate {term!r}: not a register, number or known symbol") from None


def vector_number(spec: str) -> int:
    """'GP', '#GP', '13' or 'PF' -> vector number."""
    spec = spec.strip().lstrip("#").upper()
    try:
        return int(spec, 0)
    except ValueError:
        pass
    key = f"#{spec}" if f"#{spec}" in C.VECTORS else spec
    if key not in C.VECTORS:
        raise OperandError(f"unknown exception vector {spec!r}")
    return C.VECTORS[key]
