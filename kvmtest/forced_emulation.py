"""KVM's forced-emulation prefix: the bytes of UD2 followed by "kvm" (0f 0b 6b 76 6d). With the kvm
module parameter force_emulation_prefix set, KVM skips the prefix and runs the next instruction
in its instruction emulator (arch/x86/kvm/x86.c, handle_ud); without it the UD2 is a real #UD.
Tests that need it skip with SKIP_REASON where enabled() is False."""

from pathlib import Path

PREFIX = bytes([0x0F, 0x0B, 0x6B, 0x76, 0x6D])   # the prefix as bytes (arch/x86/include/asm/emulate_prefix.h)
FEP = ".byte " + ", ".join(f"{b:#04x}" for b in PREFIX)   # guest source: put it on the line before the instruction
SKIP_REASON = "the forced-emulation prefix needs the kvm module parameter force_emulation_prefix=1"


def enabled(sys_module: str = "/sys/module") -> bool:
    """Whether the host's kvm module has force_emulation_prefix set (bit 0 of the parameter). Reads
    that one parameter file each call (it is writable while kvm is loaded), not every parameter of
    every KVM module."""
    try:
        value = (Path(sys_module) / "kvm" / "parameters" / "force_emulation_prefix").read_text().strip()
    except OSError:  # kvm not loaded, or a kernel without the parameter
        return False
    return value.lstrip("-").isdigit() and bool(int(value) & 1)


def forced(insn: str, bits: int) -> str:
    """One `.byte` statement holding the prefix and `insn` assembled as `bits`-bit code, for the
    macros that take one instruction (GUEST_ASSERT_RAISES): `FEP; insn` is two statements there, and
    only the first would be covered. `insn` must not refer to labels (it is assembled on its own)."""
    from .asm import assemble

    code = PREFIX + assemble(insn, bits).code
    return ".byte " + ", ".join(f"{b:#04x}" for b in code)
