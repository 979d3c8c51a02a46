"""The forced-emulation paths of kvmtest.differential without KVM: the instruction slot with and
without KVM's prefix, its length checks, the paths kvm_paths makes, and what the refusal check
expects behind the prefix (suites/emulator runs them where the kvm module has
force_emulation_prefix set)."""

import pytest
from iced_x86 import Code, Decoder

from kvmtest import forced_emulation
from kvmtest.differential.forms import FORMS, REFUSED, Form, refused_forms
from kvmtest.differential.instruction import (
    INSN_ADDR,
    MAX_LENGTH,
    SLOT,
    SLOT_ADDR,
    entry,
    instruction,
    slot_bytes,
)
from kvmtest.differential.kvm_paths import KvmPath, kvm_paths
from kvmtest.differential.outcome import Outcome
from kvmtest.differential.refusal import EMULATION_FAILURE, REFUSED_WHEN_EXECUTED, NotRefused, check_refusal
from kvmtest.errors import BadArgumentError

ADD = Form("alu", "add", "mr", 32, 64)   # add dword ptr [rbx], ecx


def test_forced_slot_puts_the_prefix_right_before_the_instruction():
    """On a forced path the slot is the prefix (0f 0b 6b 76 6d) ending at INSN_ADDR, the instruction
    at INSN_ADDR, NOPs after it; the vCPU starts at the prefix, and the bytes there decode as UD2 and,
    five bytes on, as the instruction itself."""
    code = instruction(ADD).code
    slot = slot_bytes(code, forced=True)
    at = INSN_ADDR - SLOT_ADDR
    assert len(slot) == SLOT
    assert slot[:at] == forced_emulation.PREFIX == bytes.fromhex("0f0b6b766d")
    assert slot[at:at + len(code)] == code and set(slot[at + len(code):]) == {0x90}
    assert entry(True) == SLOT_ADDR and entry(False) == INSN_ADDR
    assert Decoder(64, slot, ip=SLOT_ADDR).decode().code == Code.UD2
    insn = Decoder(64, slot[at:], ip=INSN_ADDR).decode()
    assert (insn.code, insn.len, insn.ip) == (Code.ADD_RM32_R32, len(code), INSN_ADDR)


def test_unforced_slot_has_the_instruction_at_the_same_address():
    """Without the prefix the bytes before INSN_ADDR are NOPs and the instruction is where the forced
    path has it: every path runs it at one address."""
    code = instruction(ADD).code
    forced, plain = slot_bytes(code, forced=True), slot_bytes(code, forced=False)
    at = INSN_ADDR - SLOT_ADDR
    assert plain[:at] == b"\x90" * at
    assert plain[at:] == forced[at:]


def test_the_longest_instruction_fits_behind_the_prefix():
    """A 15-byte instruction (SDM Vol. 2A 2.3.11: the longest) fills the slot after the prefix exactly;
    every form of the table fits."""
    longest = bytes.fromhex("6467f0488184d87856341278563412")   # lock add qword ptr fs:[eax+ebx*8+d32], imm32
    assert Decoder(64, longest).decode().len == len(longest) == MAX_LENGTH
    assert slot_bytes(longest, forced=True)[INSN_ADDR - SLOT_ADDR:] == longest
    assert max(len(instruction(f).code) for f in FORMS) <= MAX_LENGTH


@pytest.mark.parametrize("code", [b"", bytes(MAX_LENGTH + 1)], ids=["empty", "16-bytes"])
def test_code_that_cannot_be_one_instruction_is_refused_by_name(code):
    """Empty code, or more bytes than an instruction can have, is one BadArgumentError naming the
    length and the limit, never a slot that silently overruns into the guest's next code."""
    with pytest.raises(BadArgumentError, match=f"{len(code)} bytes of code.*1 to {MAX_LENGTH} bytes"):
        slot_bytes(code, forced=True)


@pytest.mark.parametrize("code_bits, names", [
    (64, ["cpl3-ram", "cpl3-mmio", "cpl3-fep", "cpl0-ram", "cpl0-mmio", "cpl0-fep"]),
    (32, ["cpl3-ram", "cpl3-mmio", "cpl3-fep", "cpl0-ram", "cpl0-mmio", "cpl0-fep"]),
    (16, ["cpl0-ram", "cpl0-mmio", "cpl0-fep"]),
])
def test_kvm_paths_add_the_forced_paths_only_when_asked(code_bits, names):
    """kvm_paths makes a forced path (operand in RAM) per CPL only with fep; 16-bit code has CPL0
    (real mode) only. Building the paths touches no KVM: guests are made on first use."""
    with_fep = kvm_paths(None, code_bits, fep=True)
    assert [p.name for p in with_fep] == names
    assert [p.name for p in kvm_paths(None, code_bits)] == [n for n in names if not n.endswith("-fep")]
    for p in with_fep:
        assert p.forces_emulation == (p.mmio or p.fep) and not (p.mmio and p.fep)
        assert p.fep == p.name.endswith("-fep")


def test_a_path_with_both_mmio_and_prefix_is_refused():
    """A forced path keeps its operand in RAM; asking for both is one BadArgumentError."""
    with pytest.raises(BadArgumentError, match="mmio and fep both set"):
        KvmPath(None, "x", "long64", mmio=True, fep=True)


class _Ends:
    """A KVM path stand-in that ends every run the same way."""

    def __init__(self, name: str, cpl: int, fep: bool, outcome: Outcome):
        self.name, self.fep, self.mmio, self.forces_emulation = name, fep, not fep, True
        self.mode = type("M", (), {"cpl": cpl, "name": "long64" if cpl == 0 else "long64-cpl3"})()
        self.outcome = outcome

    def run(self, insn, code, inputs):
        return self.outcome


UD = Outcome(gprs={}, rflags=0, window=b"", exception=(6, None))
EXIT = Outcome(gprs={}, rflags=0, window=b"", error="x", exit=EMULATION_FAILURE)


def test_refusal_behind_the_prefix_is_ud_at_every_cpl_for_a_failed_decode():
    """Behind the prefix a refused opcode fails to decode, which x86_emulate_instruction answers with
    #UD for EMULTYPE_TRAP_UD_FORCED at CPL0 too (no KVM_EXIT_INTERNAL_ERROR); the MMIO paths keep
    handle_emulation_failure's exit at CPL0."""
    form = next(f for f in refused_forms() if f.mnemonic == "popcnt" and f.code_bits == 64)
    check_refusal(form, [_Ends("cpl0-fep", 0, True, UD), _Ends("cpl3-fep", 3, True, UD),
                         _Ends("cpl0-mmio", 0, False, EXIT)])
    with pytest.raises(NotRefused, match="cpl0-fep \\(long64\\): expected #UD, observed KVM_EXIT_INTERNAL_ERROR"):
        check_refusal(form, [_Ends("cpl0-fep", 0, True, EXIT)])


def test_refusal_behind_the_prefix_of_an_executed_form_is_an_emulation_failure():
    """CMPXCHG16B decodes and is refused when executed (em_cmpxchg8b), so it reaches
    handle_emulation_failure behind the prefix too: KVM_EXIT_INTERNAL_ERROR at CPL0, #UD at CPL3."""
    assert REFUSED_WHEN_EXECUTED <= set(REFUSED)
    form = next(f for f in refused_forms() if f.mnemonic == "cmpxchg16b")
    check_refusal(form, [_Ends("cpl0-fep", 0, True, EXIT), _Ends("cpl3-fep", 3, True, UD)])
    with pytest.raises(NotRefused, match="cpl0-fep \\(long64\\): expected KVM_EXIT_INTERNAL_ERROR"):
        check_refusal(form, [_Ends("cpl0-fep", 0, True, UD)])
