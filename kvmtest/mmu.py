"""Which MMU the host uses, confirmed by behaviour.

A shadow MMU write-protects the guest's page tables and counts each guest write to them
(VM binary stat mmu_pte_write); with two-dimensional paging (EPT/NPT, TDP MMU) guest page
tables are ordinary memory and that counter stays still. The probe has a long-mode guest
rewrite one of its own PTEs while the page table is in use, then rewrite the PDE above it:
KVM's shadow MMU may leave a last-level table writable ("unsync", resynchronized at INVLPG or
a CR3 load: arch/x86/kvm/mmu/mmu.c mmu_try_to_unsync_pages), so a guest running in the
processor rewrites a PTE without a trap, but it always write-protects the tables above.
"""

from .guest.paging import KiB4, MiB2
from .x86 import PTE_P, PTE_RW

PROBE_VA = 0x80010000
PROBE_SOURCE = f"""
    mov rbx, {PROBE_VA:#x}
    mov eax, dword ptr [rbx]
    mov dword ptr [rdi], 0x11003
    invlpg [rbx]
    mov eax, dword ptr [rbx]
    mov dword ptr [rdi], 0x10003
    invlpg [rbx]
    mov eax, dword ptr [rbx]
    mov rax, qword ptr [rsi]
    mov qword ptr [rsi], rax
    GUEST_DONE
"""


def probe(kvm) -> dict:
    """{"behaviour": "shadow" | "two-dimensional" | "unknown", "evidence": text}."""
    from .guest import Guest

    try:
        with Guest(kvm, "long64", PROBE_SOURCE, page_size=MiB2, name="mmu-probe", timeout=5) as g:
            pt = g.page_tables
            pte = pt.map(PROBE_VA, 0x10000, KiB4, PTE_P | PTE_RW)
            regs = g.vcpu.get_regs()
            regs.rdi = pte
            regs.rsi = pt.entry_address(PROBE_VA, pt.leaf_level(KiB4) - 1)  # the PDE, rewritten unchanged
            g.vcpu.set_regs(regs)
            with g.vm.stats() as stats:
                if "mmu_pte_write" not in stats.by_name:
                    return {"behaviour": "unknown", "evidence": "the VM has no mmu_pte_write statistic"}
                before = stats.value("mmu_pte_write")
                g.run_to_done()
                delta = stats.value("mmu_pte_write") - before
    except Exception as e:  # a host that cannot run the probe still gets a fingerprint
        return {"behaviour": "unknown", "evidence": f"probe failed: {e}".splitlines()[0]}
    if delta > 0:
        return {"behaviour": "shadow", "evidence": f"mmu_pte_write +{delta} when the guest rewrote a live PTE and PDE"}
    return {"behaviour": "two-dimensional",
            "evidence": "mmu_pte_write unchanged when the guest rewrote a live PTE and PDE"}


def agrees(declared: str, behaviour: str) -> bool:
    """Whether the module-parameter MMU mode and the probed behaviour tell the same story."""
    if behaviour == "unknown" or declared == "unknown":
        return True
    return (declared == "shadow") == (behaviour == "shadow")
