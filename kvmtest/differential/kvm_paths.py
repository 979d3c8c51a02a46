"""The KVM paths: one guest per (CPU mode, memory kind), each running any instruction put into its
first bytes with any inputs, over and over.

The operand page (inputs.PAGE, identity-mapped in paged modes, reachable from real mode) is RAM
(a memslot of its own) on one kind of guest and no memslot at all on the other, so the same
instruction with the same register values reaches either memory or KVM_EXIT_MMIO:

  cpl3-ram    CPL3, RAM: runs natively on every host (this is "the CPU")
  cpl3-mmio   CPL3, MMIO: KVM's instruction emulator, on every host
  cpl0-ram    CPL0, RAM: natively on a host with hardware virtualization; on a host that emulates
              CPL0 code (kvm_pvm) KVM's emulator, one instruction at a time
  cpl0-mmio   CPL0, MMIO: KVM's emulator

16-bit code runs in real mode (CPL0 only: no 16-bit CPL3 mode exists here), 32-bit code in
compatibility mode (its 64-bit IDT returns from exceptions with IRETQ), 64-bit code in 64-bit mode.

An MMIO read is answered with the page's bytes at its address (as RAM would hold them), an MMIO
write lands in the page's copy and is recorded in order. An exception is a value: the guest's
handlers record it (kvmtest.guest.exc_records) and return to a GUEST_SYNC after the instruction.
"""

from ..errors import BadArgumentError, KvmtestError
from ..exits import MmioExit
from ..guest import Done, Guest, Sync, exc_records
from ..guest import layout as L
from ..guest.modes import get_mode, initial_rflags, initial_stack
from ..vm import Vm
from ..x86 import ERROR_CODE_VECTORS
from .inputs import CANARIES, PAGE, PAGE_SIZE, Inputs
from .instruction import INSN_ADDR, SLOT, STATUS_FLAGS, Instruction
from .outcome import Outcome, Write, gpr_names

MODES = {64: ("long64", "long64-cpl3"), 32: ("compat32", "compat32-cpl3"), 16: ("real", None)}
NOP = b"\x90"
RESUMED = 0xE1   # GUEST_SYNC value of the code an exception handler returns to
MAX_ACCESSES = 64    # MMIO exits one instruction may take before the run is called stuck

GUEST = f"""
diff_insn:
    {chr(10).join(['.byte 0x90'] * SLOT)}
    GUEST_DONE
diff_resume:
    GUEST_SYNC {RESUMED:#x}
    GUEST_DONE
"""


class KvmPath:
    """One KVM path (see the module docstring): `name`, and run() -> Outcome."""

    def __init__(self, kvm, name: str, mode: str, mmio: bool, timeout: float | None = None):
        self.kvm, self.name, self.mode, self.mmio = kvm, name, get_mode(mode), mmio
        self.timeout = timeout
        self.guest: Guest | None = None
        self._vm: Vm | None = None
        self._resume = 0

    def _build(self) -> Guest:
        vm = self.kvm.create_vm()
        try:
            vm.add_memory(0, PAGE)
            vm.add_memory(PAGE + PAGE_SIZE, L.MEM_SIZE - PAGE - PAGE_SIZE)
            if not self.mmio:
                vm.add_memory(PAGE, PAGE_SIZE)
            g = Guest(self.kvm, self.mode, GUEST, vm=vm, name=f"emulator-{self.name}", timeout=self.timeout)
        except BaseException:
            vm.close()
            raise
        if g.labels["diff_insn"] != INSN_ADDR:
            vm.close()
            raise KvmtestError(f"{g.name}: the instruction slot is at {g.labels['diff_insn']:#x}, not {INSN_ADDR:#x}")
        self._vm, self._resume = vm, g.labels["diff_resume"]
        return g

    def close(self) -> None:
        """Close the path's VM (a later run builds a fresh guest)."""
        if self._vm is not None:
            self._vm.close()
        self.guest = self._vm = None

    def run(self, insn: Instruction, code: bytes, inputs: Inputs) -> Outcome:
        """Run `code` (insn's bytes) once with `inputs`. A path that cannot finish (an exit other
        than MMIO and the protocol's, a guest failure, a timeout) returns an Outcome with `error`
        and is rebuilt for the next run."""
        if self.guest is None:
            self.guest = self._build()
        try:
            return self._run(self.guest, insn, code, inputs)
        except KvmtestError as e:
            self.close()
            return Outcome(gprs={}, rflags=0, page=b"", error=f"{type(e).__name__}: {str(e).splitlines()[0]}")

    def _run(self, g: Guest, insn: Instruction, code: bytes, inputs: Inputs) -> Outcome:
        vm, vcpu, bits = g.vm, g.vcpu, insn.form.code_bits
        vm.write(INSN_ADDR, code.ljust(SLOT, NOP))
        page = bytearray(inputs.page(insn.form))
        if not self.mmio:
            vm.write(PAGE, bytes(page))
        exc_records.clear(vm, 0)
        vm.write_u64(L.EXC_RESUME, self._resume)   # vCPU 0's record: GS base 0
        regs = vcpu.get_regs()
        values = {**CANARIES, "rax": inputs.rax, "rcx": inputs.rcx, "rdx": inputs.rdx, "rbx": inputs.address}
        width = (1 << 64) - 1 if bits == 64 else 0xFFFFFFFF
        for name in gpr_names(bits):
            setattr(regs, name, values[name] & width)
        regs.rip, regs.rsp = INSN_ADDR, initial_stack(self.mode)
        regs.rflags = initial_rflags(self.mode) & ~STATUS_FLAGS | inputs.flags
        vcpu.set_regs(regs)
        reads: list[Write] = []
        writes: list[Write] = []
        event = g.run()
        while isinstance(event, MmioExit):
            offset = event.phys_addr - PAGE
            if not (0 <= offset and offset + event.len <= PAGE_SIZE) or len(reads) + len(writes) >= MAX_ACCESSES:
                # The access stays unanswered: run() closes this guest and the next run builds another.
                raise g.failure(f"{event} outside the operand page {PAGE:#x}-{PAGE + PAGE_SIZE - 1:#x} "
                                f"or past {MAX_ACCESSES} accesses")
            if event.is_write:
                page[offset:offset + event.len] = event.data
                writes.append(Write(event.phys_addr, bytes(event.data)))
            else:
                data = bytes(page[offset:offset + event.len])
                event.respond(data)
                reads.append(Write(event.phys_addr, data))
            event = g.run()
        exception = None
        if isinstance(event, Sync) and event.value == RESUMED:
            record = exc_records.read(vm, 0)
            vector = record["vector"] & 0xFF
            code_known = self.mode.protected and vector in ERROR_CODE_VECTORS
            exception = (vector, record["error_code"] if code_known else None)
            regs = vcpu.get_regs()   # as the handler's IRET left them: the state at the fault
            event = g.run()
        else:
            regs = vcpu.get_regs()
        if not isinstance(event, Done):
            raise g.failure(f"expected GUEST_DONE after the instruction, got {event}")
        gprs = {name: getattr(regs, name) for name in gpr_names(bits)}
        memory = bytes(page) if self.mmio else vm.read(PAGE, PAGE_SIZE)
        return Outcome(gprs=gprs, rflags=regs.rflags, page=memory, writes=tuple(writes) if self.mmio else None,
                       exception=exception, reads=tuple(reads))


def kvm_paths(kvm, code_bits: int, timeout: float | None = None) -> list[KvmPath]:
    """The KVM paths for `code_bits` code: CPL3 (where the code size has a CPL3 mode) and CPL0,
    each with RAM and with MMIO."""
    if code_bits not in MODES:
        raise BadArgumentError(f"kvm_paths: code_bits {code_bits!r}: expected one of {sorted(MODES)}")
    cpl0, cpl3 = MODES[code_bits]
    paths = []
    if cpl3:
        paths += [KvmPath(kvm, "cpl3-ram", cpl3, False, timeout), KvmPath(kvm, "cpl3-mmio", cpl3, True, timeout)]
    paths += [KvmPath(kvm, "cpl0-ram", cpl0, False, timeout), KvmPath(kvm, "cpl0-mmio", cpl0, True, timeout)]
    return paths
