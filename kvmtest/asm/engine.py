"""The Keystone engine behind kvmtest's assembler: one handle per code size, used one call at
a time, and the search for the statement Keystone refused when it names none."""

import threading

from ..errors import AssemblyError
from .source import fail
from .traps import BEGIN


class Keystone:
    """Keystone handles per code size (16, 32, 64), serialised: the C library is not re-entrant."""

    def __init__(self):
        self.lock = threading.Lock()
        self.handles = {}

    def asm(self, text: str, bits: int, base: int) -> bytes:
        """The bytes Keystone makes of `text` as `bits`-bit code at address `base`;
        keystone.KsError where it refuses the text."""
        import keystone

        mode = {16: keystone.KS_MODE_16, 32: keystone.KS_MODE_32, 64: keystone.KS_MODE_64}[bits]
        with self.lock:
            if bits not in self.handles:
                self.handles[bits] = keystone.Ks(keystone.KS_ARCH_X86, mode)
            encoding, _ = self.handles[bits].asm(text, base)
        return bytes(encoding or b"")


KEYSTONE = Keystone()


def keystone_error(e) -> str:
    """A keystone.KsError as a message: its text without the KS_ERR_ASM_ prefix."""
    return str(e).replace("(KS_ERR_ASM_", "(").rstrip()


def locate_error(lines, bits, base, prelude) -> AssemblyError | None:
    """The AssemblyError for the statement Keystone rejects, among `lines` (kvmtest.asm.prepare
    Lines) of `bits`-bit code at `base` after the `.equ` lines `prelude`: each statement alone
    (labels stubbed), then, for errors that need what came before (`.org` backwards), the
    shortest failing prefix. None if none of that fails."""
    import keystone

    def head(rest):
        stubs = [f".equ {n}, {base:#x}" for line in rest for n in line.parsed.labels]
        equs = [line.text for line in rest if line.parsed.defines]
        return "\n".join([f"{BEGIN}:"] + prelude + stubs + equs)

    def error(text, bits_):
        try:
            KEYSTONE.asm(text, bits_, base)
        except keystone.KsError as e:
            return keystone_error(e)
        return None

    everything = head(lines)
    for line in lines:
        if line.parsed.kind == "label" or line.parsed.defines:
            continue
        why = error(everything + "\n" + line.body, line.bits)
        if why:
            return fail(line.st, why)
    lo, hi = 0, len(lines)  # the prefix of lo statements assembles, that of hi (all) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        text = head(lines[mid:]) + "\n" + "\n".join(line.text for line in lines[:mid])
        if error(text, bits):
            hi = mid
        else:
            lo = mid
    text = head(lines[hi:]) + "\n" + "\n".join(line.text for line in lines[:hi])
    why = error(text, bits) if lines else None
    if why and lines[hi - 1].parsed.name == ".org":
        why += "; .org cannot move backwards"
    return fail(lines[hi - 1].st, why) if why else None

