"""Guest source for the in-kernel IOAPIC (Intel 82093AA I/O APIC datasheet), shared by the
interrupt and migration checks. The guest reaches a register by writing its index to IOREGSEL and
then reading or writing IOWIN."""

IOAPIC_DEFAULT_BASE = 0xFEC00000   # IOREGSEL; IOWIN is at + 0x10 (82093AA 3.0; KVM's IOAPIC_DEFAULT_BASE_ADDRESS)
IOREDTBL_LEVEL = 1 << 15           # redirection entry trigger mode: level (82093AA 3.2.4)
IOREDTBL_MASKED = 1 << 16          # redirection entry interrupt mask


def redirection_low(pin: int, low: int) -> str:
    """Guest code writing `low` to the low dword of redirection entry `pin` (index 0x10 + 2 * pin)
    with RSI = the IOAPIC's base: vector, delivery mode, trigger mode and mask (82093AA 3.2.4)."""
    return f"mov dword ptr [rsi], {0x10 + 2 * pin:#x}\nmov dword ptr [rsi + 0x10], {low:#x}\n"


def redirect(pin: int, low: int, destination: int = 0) -> str:
    """Guest code programming redirection entry `pin` (RSI = the IOAPIC's base): the low dword, then
    the destination APIC ID in bits 63:56 (82093AA 3.2.4)."""
    return (redirection_low(pin, low)
            + f"mov dword ptr [rsi], {0x11 + 2 * pin:#x}\nmov dword ptr [rsi + 0x10], {destination << 24:#x}\n")
