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
  GUEST_SYNC value                hand `value` to the host
  GUEST_ASSERT_EQ a, b            the host compares a and b; a mismatch fails the test
                                  with the source line and both values
  GUEST_PRINT "text"              the host collects the text (one string literal)
  GUEST_FAIL "text"               fail the test here (one string literal)
  GUEST_ASSERT_RAISES V[(ec)], insn   run insn, expecting exception V (with error code ec)
  GUEST_AT_CPL 0|3                the following code runs at this CPL (after the guest changed it)
A value is registers of REGISTER_WIDTHS (GPRs and their parts, rip, rflags, cr0/2/3/4/8, efer,
apic_base, segment selectors) and constants (numbers, labels, .equ and layout symbols) joined
by + and -. It is taken modulo 2**width, the width of its registers (64 without), and
GUEST_ASSERT_EQ compares at the width of its register operands (eax vs -1 means 0xffffffff);
a constant must fit that width, signed or unsigned. Everything is checked when the guest is
assembled. The instruction of GUEST_ASSERT_RAISES is one real instruction, or GUEST_SYNC for an
exception the host injects at that point; an error code only for vectors that push one (SDM
Vol. 3A Table 6-1, ERROR_CODE_VECTORS), from 0 to 0xffffffff.
Exception handlers report unexpected exceptions on PORT_EXCEPTION with vector in RBX,
error code in RCX, RIP in RDX and CR2 in RSI.
Ports 0xE0-0xE7 are the protocol's; tests use other ports.
"""

import re
from dataclasses import dataclass

from ..abi.structs import kvm_regs, kvm_sregs
from ..x86 import VECTORS

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
    """A GUEST_SYNC the guest reached: the operand's `value` and the macro's `site`."""
    value: int
    site: Site

    def __str__(self):
        return f"GUEST_SYNC({self.value:#x}) at {self.site.origin}"


@dataclass(frozen=True)
class Done:
    """GUEST_DONE: the guest finished (`site`: where, when known)."""
    site: Site | None = None

    def __str__(self):
        return "GUEST_DONE"


# --- operand values -------------------------------------------------------------------------

def _register_sources() -> dict[str, tuple[str, int, int]]:
    """name -> (kvm_regs / kvm_sregs field, shift, width)."""
    src = {}
    for r in ("ax", "bx", "cx", "dx"):
        full = f"r{r}"
        src.update({full: (full, 0, 64), f"e{r}": (full, 0, 32), r: (full, 0, 16), f"{r[0]}l": (full, 0, 8),
                    f"{r[0]}h": (full, 8, 8)})
    for r in ("si", "di", "sp", "bp"):
        full = f"r{r}"
        src.update({full: (full, 0, 64), f"e{r}": (full, 0, 32), r: (full, 0, 16), f"{r}l": (full, 0, 8)})
    for n in range(8, 16):
        full = f"r{n}"
        src.update({full: (full, 0, 64), f"{full}d": (full, 0, 32), f"{full}w": (full, 0, 16),
                    f"{full}b": (full, 0, 8)})
    src.update({"rip": ("rip", 0, 64), "eip": ("rip", 0, 32), "ip": ("rip", 0, 16)})
    src.update({"rflags": ("rflags", 0, 64), "eflags": ("rflags", 0, 32), "flags": ("rflags", 0, 16)})
    src.update({r: (r, 0, 64) for r in _CONTROL})
    src.update({s: (s, 0, 16) for s in _SELECTORS})  # the selector
    return src


_CONTROL = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")
_SELECTORS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
_SOURCES = _register_sources()
# The registers a protocol operand may name (what KVM_GET_REGS / KVM_GET_SREGS report), with
# the width the value is compared at.
REGISTER_WIDTHS = {name: width for name, (_, _, width) in _SOURCES.items()}


class OperandError(ValueError):
    """A protocol operand that cannot be evaluated: a symbol the assembler did not define, or a
    control register or selector without the KVM_GET_SREGS state it needs."""


@dataclass(frozen=True)
class Value:
    """A GUEST_SYNC / GUEST_ASSERT_EQ operand or an error code, as kvmtest.guest.compose parsed
    it: registers added or subtracted, plus a constant that the assembler evaluated into the
    symbol `constant` (an .equ the composer emitted: numbers, labels, the guest's .equ, layout
    symbols). The value is taken modulo 2**width, the width of its registers (64 without)."""

    text: str                                  # as written, for messages
    registers: tuple[tuple[int, str], ...] = ()  # (+1 or -1, register name)
    constant: str | None = None
    width: int = 64

    def __str__(self):
        return self.text

    @property
    def needs_sregs(self) -> bool:
        """Whether evaluating this value reads a control register or segment selector, so that
        KVM_GET_SREGS must be read as well as KVM_GET_REGS."""
        return any(r in _CONTROL or r in _SELECTORS for _, r in self.registers)

    def evaluate(self, regs: kvm_regs, sregs: kvm_sregs | None, symbols: dict[str, int]) -> int:
        """The value at the protocol exit: the registers read from `regs` (and `sregs` for control and
        segment registers) with their signs, plus the constant's value in `symbols` (the assembled
        guest's), modulo 2**width. OperandError when the constant's symbol is not defined."""
        total = sum(sign * read_register(r, regs, sregs) for sign, r in self.registers)
        if self.constant is not None:
            if self.constant not in symbols:
                raise OperandError(f"{self.text!r}: the assembler did not define {self.constant}")
            total += symbols[self.constant]
        return total % (1 << self.width)


def read_register(name: str, regs: kvm_regs, sregs: kvm_sregs | None) -> int:
    """A register's value from KVM_GET_REGS, or KVM_GET_SREGS for control registers and
    segment selectors."""
    field, shift, width = _SOURCES[name]
    if name in _CONTROL or name in _SELECTORS:
        if sregs is None:
            raise OperandError(f"{name} needs KVM_GET_SREGS")
        value = getattr(sregs, field)
        value = value.selector if name in _SELECTORS else value
    else:
        value = getattr(regs, field)
    return (value >> shift) & ((1 << width) - 1)


def vector_number(spec: str) -> int:
    """'GP', '#GP', '13' or 'PF' -> vector number (0-255)."""
    spec = spec.strip().lstrip("#").upper()
    if re.fullmatch(r"0X[0-9A-F]+|[1-9][0-9]*|0", spec):
        vector = int(spec, 0)
        if vector > 255:
            raise OperandError(f"vector {spec} is not 0 to 255")
        return vector
    key = f"#{spec}" if f"#{spec}" in VECTORS else spec
    if key not in VECTORS:
        raise OperandError(f"unknown exception vector {spec!r} (a name such as GP or PF, or a number 0 to 255)")
    return VECTORS[key]
