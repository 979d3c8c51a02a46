"""Guest loops over a range of pages, one vCPU each: a writer that stores its pass number to every
page over and over (dirty logging, memslot churn, memslot benchmarks), and a checker that touches
each page once and counts those holding GPA ^ magic (demand paging). The range is rsi..rdi, set
per vCPU with `set_page_range`, so several vCPUs can run the same code on their own pages."""

from . import layout as L

WRITER_CONTROL = L.DATA           # nonzero: the writer stops at the end of its pass
WRITER_PROGRESS = L.DATA + 0x100  # by convention, vCPU i publishes its completed passes at + 8 * i

# rsi..rdi: this vCPU's pages; r9: where it publishes each completed pass number.
PAGE_WRITER = f"""
start:
    mov r10, {WRITER_CONTROL:#x}
    xor r8d, r8d
pass:
    inc r8
    mov rbx, rsi
page:
    mov qword ptr [rbx], r8
    add rbx, 0x1000
    cmp rbx, rdi
    jb page
    mov qword ptr [r9], r8
    cmp qword ptr [r10], 0
    je pass
    GUEST_DONE
"""

_CHECKER = """
start:
    xor ecx, ecx
    mov rbx, {magic:#x}
page:
    {first}
    mov rax, qword ptr [rsi]
    xor rax, rsi
    cmp rax, rbx
    jne next
    inc ecx
next:
    add rsi, 0x1000
    cmp rsi, rdi
    jb page
    GUEST_SYNC rcx
    GUEST_DONE
"""


def page_checker(magic: int, store_first: bool) -> str:
    """Guest source that visits each page of rsi..rdi once, first storing the page's GPA at offset
    8 when `store_first` (so its first access is a write) and then loading qword 0, and reports
    with GUEST_SYNC how many pages held their GPA ^ `magic`."""
    first = "mov qword ptr [rsi + 8], rsi" if store_first else ""
    return _CHECKER.format(magic=magic, first=first)


def set_page_range(vcpu, first: int, end: int, progress: int | None = None) -> None:
    """Aim a page loop: rsi = `first`, rdi = `end` (exclusive), and for the writer r9 = the GPA
    where it publishes its pass number."""
    regs = vcpu.get_regs()
    regs.rsi, regs.rdi = first, end
    if progress is not None:
        regs.r9 = progress
    vcpu.set_regs(regs)


def writer_passes(vm, vcpus: int) -> list[int]:
    """The completed passes of writers 0..vcpus-1 that publish at WRITER_PROGRESS + 8 * i."""
    return [vm.read_u64(WRITER_PROGRESS + 8 * i) for i in range(vcpus)]


def page_loop(label: str, first: int, end: int, body: str, reg: str = "rax") -> str:
    """Guest source that runs `body` (lines of assembly) once per 4 KiB page of [first, end), with
    `reg` holding the page's GPA; `label` is the loop's top and must be unique in the guest."""
    return f"""
    mov {reg}, {first:#x}
{label}:
{body}
    add {reg}, 0x1000
    cmp {reg}, {end:#x}
    jb {label}
"""
