"""The reference path: Unicorn (QEMU's TCG x86 front end as a library) runs the same bytes with
the same inputs, one instruction, flat segments at CPL0: 64-bit long mode, 32-bit protected mode
or real mode by the form's code size.

It knows no KVM, so where it and the CPU (the native path) agree and KVM's emulator differs, the
emulator is the suspect. Its own limits: it does not report exception error codes (vector only),
and where it is known to depart from the SDM (KNOWN_DEVIATIONS, each with its evidence and a
witness that tests/test_differential.py checks is still wrong) that fact of its result is left
out of the comparison for the inputs concerned, and the failure report says so. Where a deviation
can be worked around exactly (a `rewrite` of the bytes Unicorn decodes as the SDM decodes the
original), Unicorn runs the rewritten bytes and every fact is compared.
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

from ..guest import layout as L
from ..x86 import CR0_EM, CR0_MP, CR4_OSFXSR, CR4_OSXMMEXCPT, GP_VECTOR, RFLAGS_FIXED, UD_VECTOR
from .forms import Form
from .inputs import PAGE, PAGE_SIZE, STACK_GAP, STACK_WINDOW, WINDOW, WINDOW_SIZE, Inputs
from .instruction import INSN_ADDR, SLOT, SLOT_ADDR, Instruction, slot_bytes
from .outcome import Outcome, Write, gpr_names

MAX_MMIO_DATA = 8    # KVM_EXIT_MMIO carries at most 8 bytes (api.rst, kvm_run.mmio.data[8])
RSP0 = L.KERNEL_STACK_TOP - STACK_GAP   # Unicorn's starting RSP (only its distance moved is compared)


@dataclass(frozen=True)
class KnownDeviation:
    """A fact Unicorn gets wrong for some forms and inputs, by the SDM and by the CPU."""
    id: str
    fact: str                                   # the fact not compared: a register name, or "outcome" (all)
    applies: Callable[[Form, Inputs], bool]
    evidence: str
    witness: tuple[Form, Inputs, object]        # a form, inputs and the SDM's value of observe(outcome)
    observe: Callable[[Outcome], object]        # what the witness checks in Unicorn's outcome
    rewrite: Callable[[bytes], bytes] | None = None   # bytes Unicorn runs instead (fact "code")


ALIGNED_SSE = ("movaps", "movapd", "movdqa", "movntps", "movntpd", "movntdq")


def _aligned_sse_misaligned(form: Form, inputs: Inputs) -> bool:
    return form.mnemonic in ALIGNED_SSE and inputs.address % 16 != 0


def _size_from_prefix_16bit_code(form: Form, inputs: Inputs) -> bool:
    return form.mnemonic in ("movbe", "popcnt") and form.code_bits == 16


def _toggle_operand_size(code: bytes) -> bytes:
    """The instruction with its 66 prefix removed, or one added (prefixes precede 0F 38)."""
    return code[1:] if code[0] == 0x66 else b"\x66" + code


def _bytes_written(o: Outcome) -> int:
    return sum(len(w.data) for w in o.writes or ())


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
                                                       offset=0x800), 0xFFFFFFFF_00000000),
        lambda o: o.gprs["rax"]),
    KnownDeviation(
        "unicorn-sse-alignment-unchecked", "outcome", _aligned_sse_misaligned,
        "SDM Vol. 2A/2B MOVAPS, MOVAPD, MOVDQA, MOVNTPS, MOVNTPD, MOVNTDQ: #GP(0) if a memory operand is not "
        "aligned on a 16-byte boundary; Unicorn 2.1 (QEMU 5.0's TCG) moves the data instead, the CPU "
        "(cpl3-ram) and KVM's emulator (emulate.c: Aligned) raise #GP",
        (Form("sse", "movaps", "xm", 128, 64), Inputs(rax=0, rcx=0, rdx=0, flags=0, mem=0, offset=0x801, xmm=0),
         GP_VECTOR),
        lambda o: o.exception[0] if o.exception else None),
    KnownDeviation(
        "unicorn-16-bit-code-operand-size-from-prefix", "code", _size_from_prefix_16bit_code,
        "SDM Vol. 1 3.6 and Vol. 2B MOVBE, POPCNT: in 16-bit code the operand size is 16 bits, 32 with a 66 "
        "prefix; for MOVBE and POPCNT Unicorn 2.1 (QEMU 5.0's TCG) takes it from the 66 prefix alone, so "
        "MOVBE [m16], r16 in 16-bit code stores 4 bytes, POPCNT r16, [m16] reads 4, and the 66-prefixed forms "
        "2. Unicorn runs these with the 66 prefix toggled, which it decodes with the SDM's operand size",
        (Form("byteswap", "movbe", "mr", 16, 16), Inputs(rax=0, rcx=0, rdx=0, flags=0, mem=0, offset=0x800), 2),
        _bytes_written, _toggle_operand_size),
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

    def __init__(self, code_bits: int, workarounds: bool = True):
        self.code_bits, self.workarounds = code_bits, workarounds   # workarounds: apply KnownDeviation.rewrite
        self.uc: Uc | None = None
        self._accesses: list[tuple[bool, int, bytes]] = []
        self._pending: tuple[int, int] | None = None   # a write whose bytes are not read yet
        self._vector: int | None = None

    def _new(self) -> Uc:
        uc = Uc(UC_ARCH_X86, _MODES[self.code_bits])
        uc.mem_map(SLOT_ADDR & ~0xFFF, 0x1000)   # the slot does not cross a page
        uc.mem_map(PAGE - PAGE_SIZE, 3 * PAGE_SIZE)        # the window: the page and RAM either side
        uc.mem_map((RSP0 & ~0xFFF) - PAGE_SIZE, 2 * PAGE_SIZE)   # the stack
        # SSE enabled as on the KVM paths (modes.with_sse_enabled); Unicorn's real mode starts without.
        uc.reg_write(U.UC_X86_REG_CR0, uc.reg_read(U.UC_X86_REG_CR0) & ~CR0_EM | CR0_MP)
        uc.reg_write(U.UC_X86_REG_CR4, uc.reg_read(U.UC_X86_REG_CR4) | CR4_OSFXSR | CR4_OSXMMEXCPT)
        uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_access)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        return uc

    def _on_access(self, uc, access, address, size, value, _data):
        self._flush_write(uc)
        if access == UC_MEM_WRITE:
            # The hook fires before the store, with the value before any byte swap the store does
            # (MOVBE's), so the bytes are read from memory once the store has happened: at the next
            # access or at the end of the run.
            self._pending = (address, size)
        else:   # a read hook fires before the load: the value is in memory
            self._record(False, address, bytes(uc.mem_read(address, size)))

    def _flush_write(self, uc) -> None:
        if self._pending is not None:
            address, size = self._pending
            self._pending = None
            self._record(True, address, bytes(uc.mem_read(address, size)))

    def _record(self, write: bool, address: int, data: bytes) -> None:
        """Keep what an MMIO path sees of this access: its bytes in the operand page, in pieces of at
        most MAX_MMIO_DATA (KVM splits an access at the page's edge and into such pieces)."""
        lo, hi = max(address, PAGE), min(address + len(data), PAGE + PAGE_SIZE)
        for at in range(lo, hi, MAX_MMIO_DATA):
            end = min(at + MAX_MMIO_DATA, hi)
            self._accesses.append((write, at, data[at - address:end - address]))

    def _on_interrupt(self, uc, vector, _data):
        self._vector = vector
        uc.emu_stop()

    def run(self, insn: Instruction, code: bytes, inputs: Inputs) -> Outcome:
        """Execute `code` once from INSN_ADDR with `inputs`: one instruction, or for a REP string
        instruction every iteration, until RIP passes it."""
        if self.uc is None:
            self.uc = self._new()
        uc, bits, form = self.uc, self.code_bits, insn.form
        for d in KNOWN_DEVIATIONS if self.workarounds else ():
            if d.rewrite and d.applies(form, inputs):
                code = d.rewrite(code)
        uc.mem_write(SLOT_ADDR, slot_bytes(code, forced=False))
        uc.ctl_remove_cache(SLOT_ADDR, SLOT_ADDR + SLOT)   # drop code Unicorn translated for other bytes
        uc.mem_write(WINDOW, inputs.window(form))
        uc.mem_write(RSP0 - STACK_WINDOW // 2, inputs.stack_window())
        regs = _REGS if bits == 64 else _REGS32
        width = (1 << 64) - 1 if bits == 64 else 0xFFFFFFFF
        values = inputs.registers(form)
        for name in gpr_names(bits):
            uc.reg_write(regs[name], values[name] & width)
        uc.reg_write(U.UC_X86_REG_RSP if bits == 64 else U.UC_X86_REG_ESP, RSP0)
        if form.uses_xmm:
            uc.reg_write(U.UC_X86_REG_XMM1, inputs.xmm or 0)
        flags_reg = U.UC_X86_REG_RFLAGS if bits == 64 else U.UC_X86_REG_EFLAGS
        uc.reg_write(flags_reg, RFLAGS_FIXED | inputs.flags)
        self._accesses.clear()
        self._pending = None
        self._vector = None
        error = None
        # A REP iteration counts as an instruction of its own in Unicorn: run to the next one, under a
        # 1 s timeout. One instruction (count=1) cannot run away, and a timeout costs Unicorn a watchdog
        # thread per run (1.3 to 3.5 ms here, a hundred times the instruction), so it has none.
        try:
            uc.emu_start(INSN_ADDR, INSN_ADDR + len(code), timeout=1_000_000 if form.rep else 0,
                         count=0 if form.rep else 1)
        except UcError as e:
            if e.errno == UC_ERR_INSN_INVALID:
                self._vector = UD_VECTOR
            else:
                error = f"Unicorn: {e}"
        self._flush_write(uc)
        if self._vector is not None or error:
            self.uc = None
        gprs = {name: uc.reg_read(regs[name]) for name in gpr_names(bits)}
        writes = tuple(Write(a, d) for w, a, d in self._accesses if w)
        reads = tuple(Write(a, d) for w, a, d in self._accesses if not w)
        rsp = uc.reg_read(U.UC_X86_REG_RSP if bits == 64 else U.UC_X86_REG_ESP)
        moved = (rsp - RSP0 + (1 << 63)) % (1 << 64) - (1 << 63) if bits == 64 else \
            (rsp - RSP0 + (1 << 31)) % (1 << 32) - (1 << 31)
        return Outcome(gprs=gprs, rflags=uc.reg_read(flags_reg), window=bytes(uc.mem_read(WINDOW, WINDOW_SIZE)),
                       writes=writes, exception=None if self._vector is None else (self._vector, None),
                       error=error, reads=reads, unchecked=unchecked(insn.form, inputs),
                       xmm=uc.reg_read(U.UC_X86_REG_XMM1) if form.uses_xmm else None, rsp=moved,
                       stack=bytes(uc.mem_read(RSP0 - STACK_WINDOW // 2, STACK_WINDOW)))
