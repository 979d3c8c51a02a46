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
  cpl3-fep    CPL3, RAM, the instruction behind KVM's forced-emulation prefix: KVM's emulator
  cpl0-fep    CPL0, the same (only where the kvm module has force_emulation_prefix set)

The instruction sits at instruction.INSN_ADDR on every path; the five bytes before it hold the
forced-emulation prefix on a fep path, which starts there (instruction.entry): the #UD of its UD2
reaches KVM, which checks the bytes, skips them and emulates the instruction (x86.c handle_ud,
EMULTYPE_TRAP_UD_FORCED). A #UD reported at the prefix itself means KVM did not take it, and ends
the run as an error rather than as the instruction's exception.

16-bit code runs in real mode (CPL0 only: no 16-bit CPL3 mode exists here), 32-bit code in
compatibility mode (its 64-bit IDT returns from exceptions with IRETQ), 64-bit code in 64-bit mode.

An MMIO read is answered with the page's bytes at its address (as RAM would hold them), an MMIO
write lands in the page's copy and is recorded in order. An exception is a value: the guest's
handlers record it (kvmtest.guest.exc_records) and return to a GUEST_SYNC after the instruction.
A KVM exit that ends the run otherwise (KVM_EXIT_INTERNAL_ERROR when the emulator refuses an
instruction at CPL0) is an Outcome with `error` and `exit`, and the guest is rebuilt for the next run.

Every guest has SSE enabled as the SDM requires before any SSE instruction (CR0.EM=0, CR0.MP=1,
CR4.OSFXSR=1, CR4.OSXMMEXCPT=1; modes.with_sse_enabled; CR0.TS is 0) and the CPUID vcpu_cpuid()
gives: KVM_GET_SUPPORTED_CPUID plus MOVBE where KVM_GET_EMULATED_CPUID offers it.
"""

from ..abi import structs as S
from ..cpuid import has_feature, set_feature
from ..errors import BadArgumentError, KvmtestError
from ..exits import Exit, InternalErrorExit, MmioExit
from ..guest import Done, Guest, Sync, exc_records
from ..guest import layout as L
from ..guest.modes import get_mode, initial_rflags, initial_stack, with_sse_enabled
from ..vm import Vm
from ..x86 import ERROR_CODE_VECTORS, RFLAGS_DF, UD_VECTOR
from .inputs import MARGIN, PAGE, PAGE_SIZE, STACK_GAP, STACK_WINDOW, WINDOW, WINDOW_SIZE, Inputs
from .instruction import INSN_ADDR, MAX_LENGTH, PREFIX_ROOM, SLOT_ADDR, STATUS_FLAGS, Instruction, entry, slot_bytes
from .outcome import Outcome, Write, gpr_names

MODES = {64: ("long64", "long64-cpl3"), 32: ("compat32", "compat32-cpl3"), 16: ("real", None)}
RESUMED = 0xE1   # GUEST_SYNC value of the code an exception handler returns to
MAX_ACCESSES = 64    # MMIO exits one instruction may take before the run is called stuck
XMM1 = slice(176, 192)   # XMM1 in the XSAVE area's legacy region (SDM Vol. 1 Table 10-2)
XSTATE_BV = 512          # the XSAVE header's XSTATE_BV: bit 1 marks the SSE state in use (13.4.2)

GUEST = f"""
diff_slot:
    {chr(10).join(['.byte 0x90'] * PREFIX_ROOM)}
diff_insn:
    {chr(10).join(['.byte 0x90'] * MAX_LENGTH)}
    GUEST_DONE
diff_resume:
    GUEST_SYNC {RESUMED:#x}
    GUEST_DONE
"""


class KvmPath:
    """One KVM path (see the module docstring): `name`, and run() -> Outcome. `mmio`: the operand
    page has no memslot; `fep`: the instruction runs behind the forced-emulation prefix."""

    def __init__(self, kvm, name: str, mode: str, mmio: bool, timeout: float | None = None, cpuid=None,
                 fep: bool = False):
        if mmio and fep:
            raise BadArgumentError(f"KvmPath {name}: mmio and fep both set; a forced path keeps its operand in RAM "
                                   "so that only the prefix decides who runs the instruction")
        self.kvm, self.name, self.mode, self.mmio, self.fep = kvm, name, get_mode(mode), mmio, fep
        self.timeout, self.cpuid = timeout, cpuid
        self.guest: Guest | None = None
        self._vm: Vm | None = None
        self._resume = 0
        self._record = b""            # vCPU 0's exception record as each run starts (_build)
        self._regs = S.kvm_regs()     # the registers as the guest was built (_build): each run's base

    @property
    def forces_emulation(self) -> bool:
        """Whether only KVM's emulator can complete the instruction here (MMIO operand or the prefix)."""
        return self.mmio or self.fep

    @property
    def vcpu(self):
        """The path's vCPU, its guest built first if need be (a run that ends in error rebuilds it)."""
        if self.guest is None:
            self.guest = self._build()
        return self.guest.vcpu

    def _build(self) -> Guest:
        vm = self.kvm.create_vm()
        try:
            vm.add_memory(0, PAGE)
            vm.add_memory(PAGE + PAGE_SIZE, L.MEM_SIZE - PAGE - PAGE_SIZE)
            if not self.mmio:
                vm.add_memory(PAGE, PAGE_SIZE)
            g = Guest(self.kvm, self.mode, GUEST, vm=vm, name=f"emulator-{self.name}", timeout=self.timeout)
            if self.cpuid is not None:
                g.vcpu.set_cpuid(self.cpuid)
            g.set_sregs(with_sse_enabled(g.vcpu.get_sregs()))
        except BaseException:
            vm.close()
            raise
        if (g.labels["diff_slot"], g.labels["diff_insn"]) != (SLOT_ADDR, INSN_ADDR):
            vm.close()
            raise KvmtestError(f"{g.name}: the instruction slot is at {g.labels['diff_slot']:#x} with the instruction "
                               f"at {g.labels['diff_insn']:#x}, not {SLOT_ADDR:#x} and {INSN_ADDR:#x}")
        self._vm, self._resume = vm, g.labels["diff_resume"]
        # The record each run starts with: cleared ("not armed, nothing caught") and armed to resume
        # at diff_resume, written whole in one store per run (read back once, so its layout stays
        # exc_records's).
        exc_records.clear(vm, 0)
        vm.write_u64(L.EXC_RESUME, self._resume)   # vCPU 0's record: GS base 0
        self._record = vm.read(exc_records.record_address(0), L.EXC_RECORD_SIZE)
        self._regs = g.vcpu.get_regs()
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
        except _Ended as e:
            self.close()
            return Outcome(gprs={}, rflags=0, window=b"", error=str(e.exit), exit=e.name)
        except KvmtestError as e:
            self.close()
            return Outcome(gprs={}, rflags=0, window=b"", error=f"{type(e).__name__}: {str(e).splitlines()[0]}")

    def _run(self, g: Guest, insn: Instruction, code: bytes, inputs: Inputs) -> Outcome:
        vm, vcpu, form = g.vm, g.vcpu, insn.form
        vm.write(SLOT_ADDR, slot_bytes(code, self.fep))
        window = inputs.window(form)
        page = bytearray(window[MARGIN:MARGIN + PAGE_SIZE])
        if self.mmio:   # the margins are RAM on every path; the page is the host's copy here
            vm.write(WINDOW, window[:MARGIN])
            vm.write(PAGE + PAGE_SIZE, window[MARGIN + PAGE_SIZE:])
        else:
            vm.write(WINDOW, window)
        rsp0 = initial_stack(self.mode) - STACK_GAP
        vm.write(rsp0 - STACK_WINDOW // 2, inputs.stack_window())
        vm.write(exc_records.record_address(0), self._record)
        if form.uses_xmm:
            _set_xmm1(vcpu, inputs.xmm or 0)
        # Every register KVM_SET_REGS takes is set from the inputs but, in 16/32-bit code, R8-R15:
        # those start as the guest was built on every run, not as the last run left them.
        regs = S.kvm_regs.from_buffer_copy(self._regs)
        values = inputs.registers(form)
        width = (1 << 64) - 1 if form.code_bits == 64 else 0xFFFFFFFF
        for name in gpr_names(form.code_bits):
            setattr(regs, name, values[name] & width)
        regs.rip, regs.rsp = entry(self.fep), rsp0
        regs.rflags = initial_rflags(self.mode) & ~(STATUS_FLAGS | RFLAGS_DF) | inputs.flags
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
            if self.fep and vector == UD_VECTOR and record["rip"] == SLOT_ADDR:
                raise g.failure(f"#UD at the forced-emulation prefix ({SLOT_ADDR:#x}), not at the instruction "
                                f"({INSN_ADDR:#x}): KVM did not take the prefix (kvm.force_emulation_prefix unset?)")
            code_known = self.mode.protected and vector in ERROR_CODE_VECTORS
            exception = (vector, record["error_code"] if code_known else None)
            regs = vcpu.get_regs()   # as the handler's IRET left them: the state at the fault
            event = g.run()
        else:
            regs = vcpu.get_regs()
        if isinstance(event, Exit):
            raise _Ended(event)
        if not isinstance(event, Done):
            raise g.failure(f"expected GUEST_DONE after the instruction, got {event}")
        gprs = {name: getattr(regs, name) for name in gpr_names(form.code_bits)}
        memory = vm.read(WINDOW, MARGIN) + bytes(page) + vm.read(PAGE + PAGE_SIZE, MARGIN) if self.mmio \
            else vm.read(WINDOW, WINDOW_SIZE)
        bits = 64 if form.code_bits == 64 else 32
        moved = (regs.rsp - rsp0 + (1 << bits - 1)) % (1 << bits) - (1 << bits - 1)
        return Outcome(gprs=gprs, rflags=regs.rflags, window=memory, writes=tuple(writes) if self.mmio else None,
                       exception=exception, reads=tuple(reads), xmm=_xmm1(vcpu) if form.uses_xmm else None,
                       rsp=moved, stack=vm.read(rsp0 - STACK_WINDOW // 2, STACK_WINDOW))


class _Ended(KvmtestError):
    """A KVM exit other than MMIO and the protocol's ended the run (the emulator refusing, say)."""

    def __init__(self, exit_: Exit):
        super().__init__(str(exit_))
        self.exit = exit_
        self.name = f"{exit_.reason_name}({exit_.suberror_name})" if isinstance(exit_, InternalErrorExit) \
            else exit_.reason_name


def _set_xmm1(vcpu, value: int) -> None:
    """XMM1 := value through KVM_SET_XSAVE, with XSTATE_BV marking x87 and SSE in use: KVM_SET_FPU
    would not reach the guest while they are not (kvm.toml kvm-set-fpu-not-marked-in-use)."""
    raw = bytearray(bytes(vcpu.get_xsave()))
    raw[XMM1] = value.to_bytes(16, "little")
    raw[XSTATE_BV] |= 0x3
    vcpu.set_xsave(S.kvm_xsave.from_buffer_copy(raw))


def _xmm1(vcpu) -> int:
    """XMM1 from KVM_GET_XSAVE (0, its initial value, where XSTATE_BV marks SSE not in use)."""
    raw = bytes(vcpu.get_xsave())
    return int.from_bytes(raw[XMM1], "little") if raw[XSTATE_BV] & 0x2 else 0


def vcpu_cpuid(kvm) -> list:
    """The CPUID every path's vCPU gets: KVM_GET_SUPPORTED_CPUID, plus MOVBE where KVM_GET_EMULATED_CPUID
    offers it (api.rst 4.88: the features KVM emulates, for user space to give a vCPU; emulate.c
    em_movbe honours the guest's MOVBE bit)."""
    entries = kvm.supported_cpuid_copy()
    if has_feature(kvm.emulated_cpuid(), "movbe"):
        set_feature(entries, "movbe", True)
    return entries


def kvm_paths(kvm, code_bits: int, timeout: float | None = None, cpuid=None, fep: bool = False) -> list[KvmPath]:
    """The KVM paths for `code_bits` code: CPL3 (where the code size has a CPL3 mode) and CPL0,
    each with RAM and with MMIO, and with `fep` (for a host whose kvm module has
    force_emulation_prefix set: kvmtest.forced_emulation.enabled()) each with the forced-emulation
    prefix; their vCPUs get `cpuid` (None: KVM_GET_SUPPORTED_CPUID)."""
    if code_bits not in MODES:
        raise BadArgumentError(f"kvm_paths: code_bits {code_bits!r}: expected one of {sorted(MODES)}")
    paths = []
    for cpl, mode in zip(("cpl3", "cpl0"), MODES[code_bits][::-1], strict=True):
        if mode:
            paths += [KvmPath(kvm, f"{cpl}-ram", mode, False, timeout, cpuid),
                      KvmPath(kvm, f"{cpl}-mmio", mode, True, timeout, cpuid)]
            paths += [KvmPath(kvm, f"{cpl}-fep", mode, False, timeout, cpuid, fep=True)] if fep else []
    return paths
