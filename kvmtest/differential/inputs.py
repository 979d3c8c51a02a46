"""The architectural inputs of one differential run, and the hypothesis strategies that draw them.

Every path gets the same Inputs: RAX, RCX, RDX, the status flags (and DF), the memory operand's
value and its offset from the operand page, the immediate; for some families more registers (RBX
for CMPXCHG8B/16B, RSI and RDI for strings), XMM1, the qword at the top of the stack, and bytes laid
over the memory window. The other general-purpose registers hold fixed canaries, so an instruction
that writes a register it should not shows as a difference. Values lean on the edges where
emulators go wrong: 0, 1, the sign boundary, all ones, carry and overflow neighbours, shift counts at
and past the operand size, bit offsets before and past the operand, dividends whose quotient
overflows, operands that straddle the operand page's edges; uniform values besides. Each strategy
lists the uniform range first: hypothesis shrinks towards a strategy's first branch and, within a
range, towards its smallest value, so a failure reads as the numerically smallest input that shows
it (0x1234, not the edge 0xffffffff that happened to hit it first).

A form's inputs are one st.composite that draws every value straight from its own st.one_of: no
st.builds, .map or .flatmap layer around them, since hypothesis's work per draw, not the guests, was
most of the emulator suite's time (issue 18). Each value stays its own one_of because that is what
hypothesis's shrinker re-encodes under the uniform branch (an edge branch and its index, replaced by
the same value drawn from the range, which then shrinks); drawing the branches of several values at
once would save draws but leave failures shrunk to the edge they were found with.

The memory window is the operand page (RAM on one path, MMIO on another) and MARGIN bytes of RAM on
each side, so that an operand straddling the page's edge, or a bit offset reaching past it, lands
in memory every path starts with the same bytes and that is compared afterwards.
"""

from dataclasses import dataclass
from functools import cache

from hypothesis import strategies as st

from ..x86 import RFLAGS_DF
from .forms import Form
from .instruction import FLAG_NAMES, flag_names

M64 = (1 << 64) - 1
PAGE = 0xF000          # the operand page: RAM on one path, no memslot (MMIO) on another
PAGE_SIZE = 0x1000
MARGIN = 0x200         # RAM compared on each side of the page: BT offsets reach 256 bytes
WINDOW = PAGE - MARGIN
WINDOW_SIZE = PAGE_SIZE + 2 * MARGIN
OPERAND_OFFSETS = (0x800, 0x801, 0x803, 0x806)   # aligned and not, inside the page
BIT_OFFSET_REACH = 256 * 8   # register bit offsets reach 256 bytes either side of the operand
# What the window holds: bytes with every bit pattern, so an access at the wrong address (a BT
# offset applied wrongly) reads something other than the operand.
PATTERN = bytes((i * 0x9D + 0x35) & 0xFF for i in range(WINDOW_SIZE))
CANARIES = {"rbx": 0x2121_2121_0000_0003, "rsi": 0x5151_5151_0000_0006, "rdi": 0x7171_7171_0000_0007,
            "rbp": 0x3131_3131_0000_0005, **{f"r{i}": 0xC0DE_0000_0000_0000 | i << 32 | i for i in range(8, 16)}}
STACK_GAP = 0x100      # RSP starts this far below the mode's stack top (kvmtest.guest.modes.initial_stack)
STACK_WINDOW = 32      # bytes compared around the starting RSP: 16 below (pushes), 16 from it (pops)
STACK_PATTERN = bytes((i * 0x3B + 0x11) & 0xFF for i in range(STACK_WINDOW))


@dataclass(frozen=True)
class Inputs:
    """The architectural inputs of one run; every path gets the same."""

    rax: int
    rcx: int
    rdx: int
    flags: int      # status flags (RFLAGS bits CF PF AF ZF SF OF), and DF for string instructions
    mem: int        # the memory operand's value (little-endian at PAGE + offset)
    offset: int     # from PAGE; negative or past PAGE_SIZE - size: the operand straddles the page's edge
    imm: int | None = None
    regs: tuple[tuple[str, int], ...] = ()      # further register inputs (rbx, rsi, rdi)
    xmm: int | None = None                      # XMM1
    stack: int | None = None                    # the qword at the starting RSP
    fill: tuple[tuple[int, bytes], ...] = ()    # (offset from PAGE, bytes) laid over the window

    def __repr__(self):
        extra = "" if self.imm is None else f", imm={self.imm:#x}"
        extra += "".join(f", {name}={value:#x}" for name, value in self.regs)
        extra += "" if self.xmm is None else f", xmm1={self.xmm:#x}"
        extra += "" if self.stack is None else f", [rsp]={self.stack:#x}"
        extra += "".join(f", [{PAGE + at:#x}]={data.hex()}" for at, data in self.fill)
        flags = flag_names(self.flags) + ("|DF" if self.flags & RFLAGS_DF else "")
        # no memory operand (register forms; strings, whose are RSI/RDI): mem and offset stay 0, unshown
        memory = "" if (self.mem, self.offset) == (0, 0) else f", mem={self.mem:#x}, offset={self.offset:#x}"
        return f"Inputs(rax={self.rax:#x}, rcx={self.rcx:#x}, rdx={self.rdx:#x}, flags={flags}{memory}{extra})"

    @property
    def address(self) -> int:
        """The memory operand's address (the base register's value; identity-mapped, so also GPA)."""
        return PAGE + self.offset

    def registers(self, form: Form) -> dict[str, int]:
        """Every general-purpose register's starting value but RSP (the harness's stack)."""
        values = {**CANARIES, "rax": self.rax, "rcx": self.rcx, "rdx": self.rdx}
        if form.base:
            values[form.base] = self.address
        return {**values, **dict(self.regs)}

    def window(self, form: Form) -> bytes:
        """The memory window (WINDOW, WINDOW_SIZE bytes) as every path starts with it: the pattern,
        the operand at `offset`, then `fill`."""
        n = form.mem_size // 8
        data = bytearray(PATTERN)
        if form.base:
            at = MARGIN + self.offset
            data[at:at + n] = self.mem.to_bytes(n, "little")
        for offset, raw in self.fill:
            data[MARGIN + offset:MARGIN + offset + len(raw)] = raw
        return bytes(data)

    def stack_window(self) -> bytes:
        """The STACK_WINDOW bytes around the starting RSP (it at the middle), the qword `stack` at RSP."""
        data = bytearray(STACK_PATTERN)
        if self.stack is not None:
            data[16:24] = self.stack.to_bytes(8, "little")
        return bytes(data)


def _edges(bits: int) -> list[int]:
    """Edge values of a `bits`-wide operand, 0 first (what hypothesis shrinks to)."""
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    return [0, 1, 2, mask, mask - 1, sign, sign - 1, sign + 1, 0x5555555555555555 & mask, 0xAAAAAAAAAAAAAAAA & mask]


@cache
def values(bits: int) -> st.SearchStrategy[int]:
    """A `bits`-wide operand value: any value or an edge."""
    return st.one_of(st.integers(0, (1 << bits) - 1), st.sampled_from(_edges(bits)))


@cache
def _upper(bits: int) -> st.SearchStrategy[int]:
    """The bits of a register above its low `bits`: any, zero or all ones."""
    return st.one_of(st.integers(0, M64 >> bits), st.sampled_from([0, M64 >> bits]))


def register(draw, low: st.SearchStrategy[int] | int, bits: int) -> int:
    """A 64-bit register whose low `bits` are `low` (drawn from it if a strategy); the upper bits are
    zero, all ones or any (an 8/16-bit write must keep them, a 32-bit one clear them: SDM Vol. 1
    3.4.1.1). `draw`: the st.composite's."""
    upper = draw(_upper(bits)) if bits < 64 else 0
    value = draw(low) if isinstance(low, st.SearchStrategy) else low
    return (upper << bits | value & ((1 << bits) - 1)) & M64


@cache
def counts(bits: int) -> st.SearchStrategy[int]:
    """A shift or rotate count byte: 0, 1, around the operand size and past it, and the 5/6-bit
    masking edges (SDM Vol. 2B SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR: the count is masked to 5 bits, 6
    with REX.W)."""
    edges = [0, 1, 2, bits - 1, bits, bits + 1, 9, 17, 31, 32, 33, 63, 64, 65, 0x80, 0xFF]
    return st.one_of(st.integers(0, 0xFF), st.sampled_from(list(dict.fromkeys(edges))))


@cache
def bit_offsets(bits: int) -> st.SearchStrategy[int]:
    """A register bit offset for BT/BTS/BTR/BTC [m], r, signed (register() keeps its low `bits`: two's
    complement): inside the operand, just past it either way, and up to BIT_OFFSET_REACH bits away
    (SDM Vol. 2A BT: with a memory operand the offset is signed and selects a bit anywhere relative
    to the operand's address)."""
    edges = [0, 1, bits - 1, bits, bits + 1, 2 * bits - 1, -1, -bits, -bits - 1, BIT_OFFSET_REACH - 1,
             -BIT_OFFSET_REACH]
    return st.one_of(st.integers(-BIT_OFFSET_REACH, BIT_OFFSET_REACH - 1), st.sampled_from(edges))


FLAG_BITS = sorted(FLAG_NAMES)
_FLAG_SETS = st.integers(0, (1 << len(FLAG_BITS)) - 1)


def draw_flags(draw) -> int:
    """Any combination of the status flags (RFLAGS bits), drawn with `draw` (an st.composite's)."""
    n = draw(_FLAG_SETS)
    return sum(bit for i, bit in enumerate(FLAG_BITS) if n >> i & 1)


def _dividend_high(draw, form: Form, rax: int, divisor: int) -> int:
    """RDX for DIV/IDIV (the dividend's upper half; AH for 8-bit operands, in RAX): often one that
    gives a quotient in range, often one that does not (#DE, SDM Vol. 2A DIV, IDIV). `divisor`: the
    memory operand, or RCX for the register form."""
    bits = form.size
    mask = (1 << bits) - 1
    low = rax & mask
    sign_ext = mask if low >> (bits - 1) & 1 else 0
    choices = [0, sign_ext, (divisor & mask) - 1 if divisor & mask else 0, mask]
    return draw(st.one_of(st.integers(0, mask), st.sampled_from(choices)))


@cache
def offsets(form: Form) -> st.SearchStrategy[int]:
    """The memory operand's offset from PAGE: inside the page (aligned and not), and for a multi-byte
    operand straddling either edge of the page (half in the RAM below it, half in the RAM above it),
    so that the MMIO paths see KVM split the access (api.rst KVM_EXIT_MMIO). Not past the page's end in
    16-bit code: 0xFFFF is the real-mode segment limit, and an access beyond it raises #GP (SDM Vol. 3A
    21.1.3), which the reference model does not check."""
    n = form.mem_size // 8
    choices = list(OPERAND_OFFSETS)
    if n == 16:   # a second 16-byte aligned offset: MOVAPS and CMPXCHG16B fault on the others
        choices.append(0x810)
    if n > 1:
        choices.append(-(n // 2))
        if form.code_bits != 16:
            choices.append(PAGE_SIZE - n // 2)
    return st.sampled_from(choices)


@cache
def _rcx(form: Form) -> tuple[st.SearchStrategy[int], int]:
    """RCX's low part and its width: a count in CL for shifts by CL, a bit offset for BT-family forms,
    else a value of the operand size."""
    size = form.size
    if form.family == "shift" and form.shape in ("mcl", "gcl"):
        return counts(8), 8
    if form.family == "bit" and form.shape == "mr":
        return bit_offsets(size), size
    if form.family == "bit" and form.shape == "gr":
        # with a register base the offset is taken modulo the operand size (SDM Vol. 2A BT): small
        # offsets and those around the size and its multiples, and any value
        return st.one_of(counts(size), values(size)), size
    return values(size), size


@st.composite
def _inputs(draw, form: Form) -> Inputs:
    """RAX, RCX, RDX, the flags, the memory operand and its offset, the immediate, in the order
    st.builds(Inputs, ...) drew them (see the module docstring for why a composite)."""
    size = form.size
    rax = register(draw, values(size), size)
    rcx = register(draw, *_rcx(form))
    rdx = register(draw, values(size), size)
    flags = draw_flags(draw)
    mem = draw(values(form.mem_size)) if form.mem_size else 0
    offset = draw(offsets(form)) if form.memory else 0
    imm = None
    if form.imm_bits:
        imm = draw(counts(size) if form.family == "shift" else values(form.imm_bits))
    if form.mnemonic in ("div", "idiv"):
        high = _dividend_high(draw, form, rax, mem if form.memory else rcx)
        if size == 8:   # the dividend is AX: AH is its upper half
            rax = rax & ~0xFF00 | high << 8
        else:
            rdx = rdx & ~((1 << size) - 1) | high
    return Inputs(rax=rax, rcx=rcx, rdx=rdx, flags=flags, mem=mem, offset=offset, imm=imm)


@cache
def inputs(form: Form) -> st.SearchStrategy[Inputs]:
    """The strategy for `form`'s inputs (see the module docstring); built once per form."""
    from .family_inputs import FAMILIES
    if form.family in FAMILIES:
        return FAMILIES[form.family](form)
    return _inputs(form)
