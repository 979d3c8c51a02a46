"""Guest source for the legacy 8259A PIC pair, shared by the interrupt and migration suites."""


def init_master_pic(vector_base: int = 0x20, unmasked: tuple[int, ...] = ()) -> str:
    """Guest source (16-, 32- or 64-bit; clobbers AL) that initializes the master 8259A through
    ports 0x20/0x21 (8259A datasheet, initialization command words): ICW1 edge-triggered,
    cascaded, ICW4 follows; ICW2 `vector_base` (IRQ n arrives as vector_base + n); ICW3 slave on
    IRQ2; ICW4 8086 mode; OCW1 masks every IRQ but those in `unmasked` (0-7)."""
    if vector_base & 7 or not 0 <= vector_base <= 0xF8:
        raise ValueError(f"8259A vector base {vector_base:#x}: must be a multiple of 8 up to 0xf8")
    if any(not 0 <= irq <= 7 for irq in unmasked):
        raise ValueError(f"master 8259A IRQs are 0-7, not {unmasked}")
    mask = 0xFF & ~sum(1 << irq for irq in set(unmasked))
    return "\n".join([
        "mov al, 0x11", "out 0x20, al",                 # ICW1: edge, cascade, ICW4 follows
        f"mov al, {vector_base:#x}", "out 0x21, al",    # ICW2: vector base
        "mov al, 0x04", "out 0x21, al",                 # ICW3: slave on IRQ2
        "mov al, 0x01", "out 0x21, al",                 # ICW4: 8086 mode
        f"mov al, {mask:#x}", "out 0x21, al",           # OCW1: interrupt mask
    ]) + "\n"


def counting_irq_handler(label: str) -> str:
    """Guest source (64-bit) of an interrupt handler at `label` that counts its runs in R12 and
    ends each with a non-specific EOI to the master 8259A (OCW2 0x20 to port 0x20, 8259A
    datasheet), keeping every other register."""
    return f"""
{label}:
    inc r12
    push rax
    mov al, 0x20
    out 0x20, al            # OCW2: non-specific EOI
    pop rax
    iretq
"""
