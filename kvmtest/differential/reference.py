"""The reference path: Unicorn (QEMU's TCG x86 front end as a library) runs the same bytes with
the same inputs, one instruction, flat segments at CPL0: 64-bit long mode, 32-bit protected mode
or real mode by the form's code size.

It knows no KVM, so where it and the CPU (the native path) agree and KVM's emulator differs, the
emulator is the suspect. Its own limits: it does not report exception error codes (vector only),
and where it is known to depart from the SDM (KNOWN_DEVIATIONS, each with its evidence and a
witness that tests/test_differential.py checks is still wrong) that fact of its result is left
out of the comparison for the inputs concerned, and the failure report says so.
"""

from collections.abc import Callable
from dataclasses import dataclass

from unicorn import (
    UC_ARCH_X86,
    UC_ERR_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_MEM_WRITE,
    UC_MODE_16,
    UC_MODE_32,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn import x86_const as U

from ..x86 import RFLAGS_FIXED, UD_VECTOR
from .forms import Form
from .inputs import CANARIES, PAGE, PAGE_SIZE, Inputs
from .instruction import INSN_ADDR, SLOT, Instruction
from .outcome import Outcome, Write, gpr_names


@dataclass(frozen=True)
class KnownDeviation:
    """A fact Unicorn gets wrong for some forms and inputs, by the SDM and by the CPU."""
    id: str
    fact: str                                   # the outcome fact not compared (a register name)
    applies: Callable[[Form, Inputs], bool]
    evidence: str
    witness: tuple[Form, Inputs, int]           # a form, inputs and the SDM's value of `fact`


def _cmpxchg32_equal(form: Form, inputs: Inputs) -> bool:
    return form.mnemonic == "cmpxchg" and form.size == 32 and form.code_bits == 64 and \
        inputs.rax & 0xFFFFFFFF == inputs.mem


KNOWN_DEVIATIONS = (
    KnownDeviation(
        "unicorn-cmpxchg32-equal-zero-extends-rax", "rax", _cmpxchg32_equal,
        "SDM Vol. 2A CMPXCHG: when the accumulator equals the destination the source is stored and "
        "the accumulator is not written, so RAX[63:32] stay; Unicorn 2.1 (QEMU 5.0's TCG) zero-extends "
        "RAX anyway, as QEMU did until d1bb978ba1 'target/i386: fix cmpxchg with 32-bit register "
        "destination' (QEMU 7.2); the CPU (cpl3-ram) and KVM keep RAX[63:32]",
        (Form("xchg", "cmpxchg", "mr", 32, 64), Inputs(rax=0xFFFFFFFF_00000000, rcx=0, rdx=0, flags=0, mem=0,
                                                       offset=0x800), 0xFFFFFFFF_00000000)),
)


def unchecked(form: Form, inputs: Inputs) -> tuple[tuple[str, str], ...]:
    """The facts of Unicorn's outcome not to compare for `form` with `inputs`, each with why."""
    return tuple((d.fact, f"{d.id}: {d.evidence}") for d in KNOWN_DEVIATIONS if d.applies(form, inputs))

_MODES = {64: UC_MODE_64, 32: UC_MODE_32, 16: UC_MODE_16}
_REGS = {name: getattr(U, f"UC_X86_REG_{name.upper()}") for name in
         ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")}
_REGS32 = {name: getattr(U, f"UC_X86_REG_E{name[1:].upper()}") for name in
           ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi")}


class UnicornPath:
    """Runs instructions in one Unicorn instance per code size, reused while runs end normally (a
    new one costs about 1.5 ms, a run 0.1). After an exception Unicorn keeps it pending (the next
    run raised #DF, the one after nothing), so an instance that saw one is replaced."""

    name = "unicorn"

    def __init__(self, code_bits: int):
        self.code_bits = code_bits
        self.uc: Uc | None = None
        self._accesses: list[tuple[bool, int, int, int]] = []
        self._vector: int | None = None

    def _new(self) -> Uc:
        uc = Uc(UC_ARCH_X86, _MODES[self.code_bits])
        uc.mem_map(INSN_ADDR & ~0xFFF, 0x1000)
        uc.mem_map(PAGE, PAGE_SIZE)
        uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_access)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        return uc

    def _on_access(self, uc, access, address, size, value, _data):
        if access != UC_MEM_WRITE:   # a read hook fires before the load: the value is in memory
            value = int.from_bytes(uc.mem_read(address, size), "little")
        self._accesses.append((access == UC_MEM_WRITE, address, size, value & ((1 << 8 * size) - 1)))

    def _on_interrupt(self, uc, vector, _data):
        self._vector = vector
        uc.emu_stop()

    def run(self, insn: Instruction, code: bytes, inputs: Inputs) -> Outcome:
        """Execute `code` once from INSN_ADDR with `inputs` (count=1: one instruction)."""
        if self.uc is None:
            self.uc = self._new()
        uc, bits = self.uc, self.code_bits
        uc.mem_write(INSN_ADDR, code.ljust(SLOT, b"\x90"))
        uc.ctl_remove_cache(INSN_ADDR, INSN_ADDR + SLOT)   # drop code Unicorn translated for other bytes
        uc.mem_write(PAGE, inputs.page(insn.form))
        regs = _REGS if bits == 64 else _REGS32
        width = (1 << 64) - 1 if bits == 64 else 0xFFFFFFFF
        values = {**CANARIES, "rax": inputs.rax, "rcx": inputs.rcx, "rdx": inputs.rdx, "rbx": inputs.address}
        for name in gpr_names(bits):
            uc.reg_write(regs[name], values[name] & width)
        flags_reg = U.UC_X86_REG_RFLAGS if bits == 64 else U.UC_X86_REG_EFLAGS
        uc.reg_write(flags_reg, RFLAGS_FIXED | inputs.flags)
        self._accesses.clear()
        self._vector = None
        error = None
        try:
            uc.emu_start(INSN_ADDR, INSN_ADDR + SLOT, count=1)
        except UcError as e:
            if e.errno == UC_ERR_INSN_INVALID:
                self._vector = UD_VECTOR
            else:
                error = f"Unicorn: {e}"
        if self._vector is not None or error:
            self.uc = None
        gprs = {name: uc.reg_read(regs[name]) for name in gpr_names(bits)}
        writes = tuple(Write(a, v.to_bytes(n, "little")) for w, a, n, v in self._accesses if w)
        reads = tuple(Write(a, v.to_bytes(n, "little")) for w, a, n, v in self._accesses if not w)
        return Outcome(gprs=gprs, rflags=uc.reg_read(flags_reg), page=bytes(uc.mem_read(PAGE, PAGE_SIZE)),
                       writes=writes, exception=None if self._vector is None else (self._vector, None),
                       error=error, reads=reads, unchecked=unchecked(insn.form, inputs))
