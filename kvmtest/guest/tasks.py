"""Hardware task switching in a 32-bit protected-mode guest (SDM Vol. 3A chapter 8, "Task
Management"): tasks the host puts in the guest's GDT, the TSS types the GDT holds, and the state a
nested task switch must leave. KVM carries task switches out in software, so the checks read
every field back from guest memory."""

from ..x86 import RFLAGS_NT, SYS_TYPE_TSS_BUSY, TSS32_EIP, TSS32_LINK, TSS32_SIZE
from . import descriptors as D
from . import layout as L


def tss_type(g, selector: int) -> int:
    """The type of the TSS descriptor at `selector` as the guest's GDT holds it now: available
    (0x9) or busy (0xB), the busy flag being the processor's to set and clear (8.2.2)."""
    return D.Descriptor.decode(g.vm.read(L.GDT + selector, 8)).type


def add_task(g, selector: int, base: int, entry: str, *, esp: int, cs: int = L.SEL_CODE32, data: int = L.SEL_DATA,
             **fields) -> None:
    """An available 32-bit TSS at GPA `base`, its descriptor at GDT `selector` (limit 0x67, the
    smallest, 8.2.2), for a task that starts at label `entry` with ESP `esp`, CS `cs` and `data` in
    the data segment registers; `fields` go to descriptors.tss32_task (eflags, cr3, link, segments)."""
    g.set_gdt_entry(selector, D.tss(base, TSS32_SIZE - 1, busy=False).encode())
    g.vm.write(base, D.tss32_task(g.labels[entry], esp, cs=cs, data=data, **fields))


def expect_nested_switch(g, tr: int, eflags: int, old_eip: int, *, new: int, new_base: int, old: int = L.SEL_TSS,
                         old_base: int = L.TSS) -> None:
    """Require what a nested task switch (CALL, or an interrupt or exception through a task gate)
    leaves (8.3, Table 8-2; 8.4): TR = `new` and EFLAGS.NT set in the new task (`tr` and `eflags` as
    the new task reported them), the new TSS's previous-task link = the old TR, both TSSs busy, and
    the old task's EIP = `old_eip` saved in its TSS. AssertionError naming what differs."""
    if tr != new:
        raise AssertionError(f"TR in the new task: {tr:#x}, expected {new:#x}")
    if not eflags & RFLAGS_NT:
        raise AssertionError(f"EFLAGS {eflags:#x} in the new task: NT clear, a nested switch sets it")
    link = g.vm.read_u32(new_base + TSS32_LINK) & 0xFFFF
    if link != old:
        raise AssertionError(f"new TSS previous-task link {link:#x}, expected the old TR {old:#x}")
    types = (tss_type(g, old), tss_type(g, new))
    if types != (SYS_TYPE_TSS_BUSY, SYS_TYPE_TSS_BUSY):
        raise AssertionError(f"TSS types (old, new) {types[0]:#x}, {types[1]:#x}: both must stay busy (0xb) while "
                             "nested")
    saved = g.vm.read_u32(old_base + TSS32_EIP)
    if saved != old_eip:
        raise AssertionError(f"old TSS EIP {saved:#x}, expected {old_eip:#x}")
