"""Guest: a VM with one vCPU running a piece of assembly in a chosen CPU mode.

    with Guest(kvm, "long64", "mov al, 0x42; out 0x10, al; GUEST_DONE") as g:
        exit = g.run()              # IoExit(port=0x10)
        g.run_to_done()

The builder lays out GDT, IDT, TSS, exception handlers and page tables (kvmtest.guest.layout),
sets the vCPU's registers for the mode, and the run loop answers the guest/host protocol.
"""

import struct

from .. import ioctl as _ioctl
from .. import validate
from ..abi.constants import vector_name
from ..asm import Section, assemble_sections
from ..errors import AssemblyError, BadArgumentError, ClosedError, GuestFailure, GuestTimeout, KvmtestError
from ..exits import Exit, IoExit, MmioExit
from ..memory import PageAllocator
from ..vcpu import describe_mode
from . import descriptors as D
from . import layout as L
from . import protocol as P
from .compose import Composer, guests_dir
from .modes import (CR0_PG, CR4_PAE, EFER_LMA, gdt_entries, get_mode, initial_rflags, initial_stack, keep_tr_loadable,
                    mode_sregs)
from .paging import GiB1, KiB4, P as PTE_P, RW as PTE_RW, US as PTE_US, PageTables

DEFAULT_MAX_EXITS = 100_000
RESET_ROM = 0xFFFF0000  # 64 KiB at the top of 4 GiB holds the reset vector for mode "reset"


def _symbols() -> dict[str, int]:
    names = {k: v for k, v in vars(L).items() if k.isupper() and isinstance(v, int)}
    names.update({k: v for k, v in vars(P).items() if k.startswith("PORT_") and isinstance(v, int)})
    return names


def _user_symbols(symbols, guest: str) -> dict[str, int]:
    """A test's extra assembler symbols: names (str) to integer values that fit 64 bits, signed or
    not; anything else is refused here rather than failing deep in the assembler, or not at all."""
    if symbols is None:
        return {}
    validate.mapping(symbols, f"Guest {guest!r} symbols")
    for key, value in symbols.items():
        if not isinstance(key, str) or not key:
            raise BadArgumentError(f"Guest {guest!r} symbols: name {key!r} is not a symbol name (a str)")
        validate.int_in(value, -(1 << 63), (1 << 64) - 1, f"Guest {guest!r} symbol {key}")
    return dict(symbols)


def _handler_section(mode) -> Section:
    """Per-vector stubs (push error code if the CPU does not, push vector, jump) + common handler."""
    bits = mode.handler_bits
    lines = []
    from ..abi.constants import ERROR_CODE_VECTORS


    def push(value):
        # Keystone pushes 32 bits for push imm in 16-bit code unless it is `word ptr` and fits
        # an imm8, so 16-bit stubs spell PUSH imm16 (68 iw) out.
        return f"push {value}" if bits != 16 else f".byte 0x68\n.word {value}"

    for v in range(256):
        lines.append(f"kt_stub_{v}:")
        if v not in ERROR_CODE_VECTORS or not mode.protected:
            lines.append(push(0))
        lines += [push(v), "jmp kt_exc_common"]
    stubs = Section.from_text("stubs", L.HANDLERS, bits, "\n".join(lines))
    path = guests_dir() / f"handlers{bits}.S"
    common = Section.from_text(path.name, 0, bits, path.read_text())
    return Section("handlers", L.HANDLERS, bits, stubs.statements + common.statements)


class Guest:
    """A VM with memory, one vCPU in `mode`, and `source` loaded at layout.CODE."""

    def __init__(self, kvm, mode, source: str, *, page_size: int = KiB4, timeout: float | None = None,
                 symbols: dict[str, int] | None = None, name: str = "guest", mem_size: int = L.MEM_SIZE,
                 max_exits: int = DEFAULT_MAX_EXITS, vm=None, identity_size: int = L.IDENTITY_SIZE,
                 user_pages: bool | None = None, irqchip: bool = False):
        from ..kvm import Kvm

        if not isinstance(name, str):
            raise BadArgumentError(f"Guest name {name!r}: expected a str")
        if not isinstance(kvm, Kvm):
            raise BadArgumentError(f"Guest {name!r}: expected a kvmtest.kvm.Kvm, got {kvm!r:.80}")
        if not isinstance(source, str):
            raise BadArgumentError(f"Guest {name!r} source: expected assembly text (a str), got {source!r:.80}")
        self.kvm = kvm
        self.mode = get_mode(mode)
        self.name = name
        # Checked before any VM exists, as are the sizes: a negative identity_size was read as "none".
        page_size = validate.int_in(page_size, 1, 1 << 64, f"Guest {name!r} page_size")
        identity_size = validate.int_in(identity_size, 0, 1 << 57, f"Guest {name!r} identity_size")
        if timeout is not None:
            timeout = validate.timeout(timeout, f"Guest {name!r} timeout")
        symbols = _user_symbols(symbols, name)
        self.max_exits = validate.int_in(max_exits, 1, 1 << 63, f"Guest {name!r} max_exits", decimal=True)
        self.page_size = page_size
        self.identity_size = identity_size
        # Pages carry U/S=1 at CPL3, or when a CPL0 guest will drop to CPL3 itself.
        self.user_pages = self.mode.user if user_pages is None else user_pages
        self.output: list[str] = []
        self.syncs: list[int] = []
        self._owns_vm = vm is None
        self.vm = vm or kvm.create_vm()
        try:
            if irqchip and not self.vm.irqchip:
                self.vm.create_irqchip()  # before any vCPU, so they get local APICs (api.rst 4.24)
            self._build(source, symbols, mem_size, timeout)
        except BaseException:
            self.close()
            raise

    # --- building ------------------------------------------------------------------------------

    def _build(self, source, user_symbols, mem_size, timeout):
        mode = self.mode
        if mode.requires and not self.kvm.has_feature(mode.requires):
            raise KvmtestError(f"mode {mode.name} needs CPU feature {mode.requires}, which KVM does not report")
        if self.page_size == GiB1 and not self.kvm.has_feature("pdpe1gb"):
            raise KvmtestError(f"1 GiB pages need CPU feature pdpe1gb (CPUID.80000001H:EDX[26]), "
                               "which KVM_GET_SUPPORTED_CPUID does not report")
        if page_size_invalid(mode, self.page_size):
            raise KvmtestError(f"mode {mode.name} has no {self.page_size:#x}-byte pages "
                               f"(it has {', '.join(hex(s) for s in mode.page_sizes) or 'no paging'})")
        vm = self.vm
        if not vm.memslots:
            vm.add_memory(0, mem_size)
        self.vcpu = vm.create_vcpu(len(vm.vcpus))
        if timeout is not None:
            self.vcpu.timeout = timeout
        cpuid = self.kvm.cached_supported_cpuid()
        self.vcpu.set_cpuid(cpuid)
        vm.write(L.EXC_INFO, bytes(0x30))
        vm.write_u64(L.EXC_VECTOR, 0xFF)

        self.page_tables = self._install_paging(mem_size)
        composer = Composer(mode.code_bits, user=mode.user)
        statements = composer.expand(source, self.name)
        self.sites = composer.sites
        symbols = {**_symbols(), "KT_CR3": self.page_tables.cr3 if self.page_tables else 0, **user_symbols}
        sections = [Section("code", L.CODE, mode.code_bits, tuple(statements)), _handler_section(mode)]
        code, handlers = assemble_sections(sections, symbols)
        if code.end > L.CODE_END:
            raise AssemblyError(f"{self.name}: code is {len(code.code)} bytes, more than the "
                                f"{L.CODE_END - L.CODE} that fit at {L.CODE:#x}")
        vm.write(L.CODE, code.code)
        vm.write(L.HANDLERS, handlers.code)
        self.labels = {**code.labels, **handlers.labels}
        self.symbols = {**symbols, **code.equs, **handlers.equs, **self.labels}
        composer.check(self.symbols)  # macro constants that name symbols: in range?
        self._site_at = {}
        for label, site in self.sites.items():
            addr = self.labels[label]
            # KVM may report RIP at the access or after it; sites never share either address.
            self._site_at[addr] = self._site_at[addr + site.length] = site
        self.entry = self.labels.get("start", L.CODE)
        self._install_tables(handlers)
        self._set_registers()

    def _install_tables(self, handlers):
        mode, vm = self.mode, self.vm
        stub = lambda v: self.labels[f"kt_stub_{v}"]  # noqa: E731
        if mode.protected or mode.name == "reset":
            for selector, raw in gdt_entries().items():
                vm.write(L.GDT + selector, raw)
        if not mode.protected:
            vm.write(L.IVT, b"".join(D.ivt_entry(0, stub(v)) for v in range(256)))
            if mode.name == "reset":
                self._install_reset_vector()
            return
        if mode.handler_bits == 64:
            vm.write(L.TSS, D.tss64(L.KERNEL_STACK_TOP))
            gates = [D.gate(stub(v), L.SEL_CODE64, D.INT_GATE, 3 if v in (3, 4) else 0, bits=64) for v in range(256)]
        elif mode.handler_bits == 32:
            vm.write(L.TSS, D.tss32(L.KERNEL_STACK_TOP, L.SEL_DATA))
            gates = [D.gate(stub(v), L.SEL_CODE32, D.INT_GATE, 3 if v in (3, 4) else 0) for v in range(256)]
        else:
            vm.write(L.TSS, D.tss32(L.KERNEL_STACK_TOP, L.SEL_DATA16))
            gates = [D.gate(stub(v), L.SEL_CODE16, D.INT_GATE16, 0, bits=16) for v in range(256)]
        vm.write(L.IDT, b"".join(gates))

    def _install_reset_vector(self):
        # The vCPU starts at F000:FFF0 (linear 0xFFFFFFF0, SDM Vol. 3A 10.1.4): a far jump to 0:CODE.
        rom = self.vm.add_memory(RESET_ROM, 0x10000)
        rom.mapping.write(0xFFF0, bytes([0xEA]) + struct.pack("<HH", self.entry, 0) + b"\xf4")

    def _install_paging(self, mem_size):
        mode = self.mode
        # "reset" guests switch to long mode themselves; they find 4-level tables at KT_CR3.
        fmt = "4level" if mode.name == "reset" else mode.paging
        if not fmt:
            return None
        alloc = PageAllocator(self.vm, L.PAGE_TABLES, L.MEM_SIZE)
        pt = PageTables(self.vm, alloc, fmt)
        flags = PTE_P | PTE_RW | (PTE_US if self.user_pages else 0)
        size = max(self.page_size, self.identity_size)
        pt.map_range(0, 0, size, self.page_size, flags)
        mmio_size = max(self.page_size, L.MMIO_SIZE)
        pt.map_range(L.MMIO_BASE, L.MMIO_BASE, mmio_size, self.page_size, flags)
        return pt

    def _set_registers(self):
        from ..cpuid import has_feature

        vcpu, mode = self.vcpu, self.mode
        if mode.name != "reset":
            nx = has_feature(self.kvm.cached_supported_cpuid(), "nx")
            cr3 = self.page_tables.cr3 if self.page_tables else 0
            want = mode_sregs(mode, vcpu.get_sregs(), cr3, nx)
            vcpu.set_sregs(want)
            self._check_mode_entered(want, vcpu.get_sregs())
            regs = vcpu.get_regs()
            regs.rip, regs.rsp, regs.rflags = self.entry, initial_stack(mode), initial_rflags(mode)
            vcpu.set_regs(regs)

    # --- test-specific tables ------------------------------------------------------------------

    def set_idt_gate(self, vector: int, target: int | str, *, dpl: int = 0, gate_type: int = D.INT_GATE,
                     selector: int | None = None, ist: int = 0) -> None:
        """Point IDT entry `vector` at `target` (an address or a label of the guest source).

        Each value must fit where it goes: vector 0-255 (the IDT and IVT have 256 entries, and
        an entry past them would overwrite the TSS or the GDT), the handler offset the mode's
        gate holds (16 bits in the IVT and 16-bit gates, 32 or 64 bits), DPL 0-3, a 4-bit type,
        a 16-bit selector, IST 1-7 only in a 64-bit IDT (SDM Vol. 3A 6.11, 6.14.1)."""
        table = "IDT" if self.mode.protected else "IVT"
        vector = validate.int_in(vector, 0, 255, f"{self.name} {table} vector")
        bits = self.mode.handler_bits if self.mode.protected else 16
        offset = validate.int_in(self._address(target), 0, (1 << bits) - 1,
                                 f"{self.name} {table} vector {vector} handler ({bits}-bit offset in {self.mode.name})")
        if not self.mode.protected:
            self.vm.write(L.IVT + 4 * vector, D.ivt_entry(0, offset))
            return
        what = f"{self.name} IDT vector {vector}"
        dpl = validate.int_in(dpl, 0, 3, f"{what} gate DPL")
        gate_type = validate.int_in(gate_type, 0, 15, f"{what} gate type")
        ist = validate.int_in(ist, 0, 7 if bits == 64 else 0, f"{what} gate IST (only a 64-bit IDT has one)")
        if bits == 16 and gate_type in (D.INT_GATE, D.TRAP_GATE):
            gate_type -= 8  # the 16-bit gate types
        default = {64: L.SEL_CODE64, 32: L.SEL_CODE32, 16: L.SEL_CODE16}[bits]
        selector = default if selector is None else validate.uint(selector, 16, f"{what} gate selector")
        raw = D.gate(offset, selector, gate_type, dpl, bits=64 if bits == 64 else 32, ist=ist)
        self.vm.write(L.IDT + vector * len(raw), raw)

    def set_gdt_entry(self, selector: int, raw: bytes) -> None:
        """Write a descriptor (8 bytes, or 16 for long-mode system descriptors) at `selector`."""
        selector = validate.int_in(selector, 0, 0xFFFF, f"{self.name} GDT selector")
        raw = validate.data(raw, f"{self.name} GDT descriptor at selector {selector:#x}")
        if len(raw) not in (8, 16):
            raise BadArgumentError(f"{self.name} GDT descriptor at selector {selector:#x}: {len(raw)} bytes; a "
                                   "descriptor has 8 (16 for a long-mode system descriptor)")
        if selector < L.GDT_ENTRIES * 8 or selector % 8 or selector + len(raw) > 0x1000:
            raise BadArgumentError(f"{self.name} GDT selector {selector:#x}: tests may use "
                                   f"{L.GDT_ENTRIES * 8:#x}-0xff8, 8-aligned, within the GDT page")
        self.vm.write(L.GDT + selector, raw)

    def _address(self, target) -> int:
        if isinstance(target, int) and not isinstance(target, bool):
            return target
        if not isinstance(target, str):
            raise BadArgumentError(f"{self.name}: {target!r} is neither an address nor a label of the guest source")
        if target not in self.labels:
            raise KvmtestError(f"{self.name}: no label {target!r} in the guest source")
        return self.labels[target]

    def _check_mode_entered(self, want, got):
        """KVM_SET_SREGS must leave the vCPU in the state written (api.rst 4.13/4.14); a guest
        that silently ran in another mode would pass or fail for the wrong reason."""
        diffs = [f"{name} wrote {getattr(want, name):#x} read {getattr(got, name):#x}"
                 for name in ("cr0", "cr3", "cr4", "efer") if getattr(want, name) != getattr(got, name)]
        for seg in ("cs", "ss"):
            w, g = getattr(want, seg), getattr(got, seg)
            if (w.selector, w.l, w.db, w.dpl) != (g.selector, g.l, g.db, g.dpl):
                diffs.append(f"{seg} wrote sel={w.selector:#x} l={w.l} db={w.db} dpl={w.dpl}, "
                             f"read sel={g.selector:#x} l={g.l} db={g.db} dpl={g.dpl}")
        if diffs:
            raise GuestFailure(f"{self.name}: cannot put the vCPU in mode {self.mode.name}: KVM_SET_SREGS "
                               f"succeeded but KVM_GET_SREGS differs: {'; '.join(diffs)}")

    # --- running -------------------------------------------------------------------------------

    def run(self, timeout: float | None = None, vcpu=None):
        """Run until the next event the test should see: a Sync, Done, or any non-protocol Exit.

        Prints, passing assertions and passing exception checks are handled here; a failed
        one, or an unexpected exception in the guest, raises GuestFailure. `vcpu` picks one
        of the guest's vCPUs (default: the first).
        """
        if vcpu is not None and not any(vcpu is v for v in self.vm.vcpus):
            raise BadArgumentError(f"{self.name}: vcpu {vcpu!r:.80} is not one of this guest's vCPUs "
                                   f"({', '.join(v.name for v in self.vm.vcpus) or 'none'})")
        vcpu = vcpu or self.vcpu
        self._reload_pdptes()
        for _ in range(self.max_exits):
            try:
                exit_ = vcpu.run(timeout)
            except GuestTimeout as e:
                raise GuestTimeout(f"{self.name} ({self.mode.name}): {e}\n{self._trace()}") from None
            port = _protocol_port(exit_)
            if port is not None:
                event = self._protocol(port, vcpu)
                if event is not None:
                    return event
                continue
            return exit_
        raise GuestFailure(f"{self.name} ({self.mode.name}): more than {self.max_exits} exits without an event")

    def _reload_pdptes(self) -> None:
        """After the host changed a PAE PDPTE, load CR3 again on every vCPU in PAE paging (KVM_SET_SREGS
        with the same CR3 reloads the PDPTE registers, SDM Vol. 3A 4.4.1), as an OS does with MOV CR3."""
        pt = self.page_tables
        if pt is None or not pt.pdptes_changed:
            return
        for vcpu in self.vm.vcpus:
            if vcpu.closed:
                continue
            sregs = vcpu.get_sregs()
            if sregs.cr0 & CR0_PG and sregs.cr4 & CR4_PAE and not sregs.efer & EFER_LMA:
                vcpu.set_sregs(keep_tr_loadable(sregs))
        pt.pdptes_changed = False

    def run_to_done(self, timeout: float | None = None, vcpu=None) -> list[int]:
        """Run to GUEST_DONE; returns the GUEST_SYNC values seen. Any other exit fails the test,
        and so do more than max_exits GUEST_SYNCs (a guest syncing in a loop would never end)."""
        values = []
        while True:
            if len(values) >= self.max_exits:
                raise self.failure(f"more than {self.max_exits} GUEST_SYNC events without GUEST_DONE "
                                   f"(last values {values[-3:]})", vcpu=vcpu)
            event = self.run(timeout, vcpu)
            if isinstance(event, P.Done):
                return values
            if isinstance(event, P.Sync):
                values.append(event.value)
                continue
            raise self.failure(f"expected GUEST_DONE, got {event}", vcpu=vcpu)

    def expect_sync(self, timeout: float | None = None, vcpu=None) -> int:
        """Run to the next event, which must be a GUEST_SYNC; returns its value."""
        event = self.run(timeout, vcpu)
        if not isinstance(event, P.Sync):
            raise self.failure(f"expected GUEST_SYNC, got {event}", vcpu=vcpu)
        return event.value

    def expect_exit(self, exit_type, timeout: float | None = None, **fields) -> Exit:
        """Run to the next event and assert it is `exit_type` with the given field values."""
        event = self.run(timeout)
        if not isinstance(event, exit_type):
            raise self.failure(f"expected {exit_type.__name__}, got {event}")
        wrong = {k: (v, getattr(event, k)) for k, v in fields.items() if getattr(event, k) != v}
        if wrong:
            detail = ", ".join(f"{k}: expected {_fmt(v)}, got {_fmt(got)}" for k, (v, got) in wrong.items())
            raise self.failure(f"{event}: {detail}")
        return event

    def _protocol(self, port: int, vcpu=None):
        vcpu = vcpu or self.vcpu
        regs = vcpu.get_regs()
        if port == P.PORT_EXCEPTION:
            raise self.failure(
                f"unexpected {vector_name(regs.rbx & 0xFF)} (vector {regs.rbx & 0xFF}) in the guest: "
                f"error code {regs.rcx:#x}, RIP {regs.rdx:#x}, CR2 {regs.rsi:#x}", regs)
        site = self._site_at.get(regs.rip)
        if site is None:  # code running with a nonzero CS base (an AP started by SIPI, say)
            site = self._site_at.get(regs.rip + vcpu.get_sregs().cs.base)
        if site is None or site.port != port:
            raise self.failure(f"protocol access for port {port:#x} at RIP {regs.rip:#x} matches no GUEST_* site", regs)
        _ioctl.note(vcpu.name, "guest", site.kind, site.origin)
        if site.kind == "done":
            return P.Done(site)
        if site.kind == "sync":
            value = self._eval(site, site.operands[0], regs, vcpu)
            self.syncs.append(value)
            return P.Sync(value, site)
        if site.kind == "print":
            self.output.append(site.operands[0])
            return None
        if site.kind == "fail":
            raise self.failure(f"GUEST_FAIL at {site.origin}: {site.operands[0]}", regs)
        if site.kind == "assert_eq":
            # both operands are taken modulo the width of the registers compared (compose)
            a, b = (self._eval(site, op, regs, vcpu) for op in site.operands)
            if a != b:
                raise self.failure(f"guest assertion failed at {site.origin}: `{site.text}`: "
                                   f"{site.operands[0]} = {_fmt(a)}, expected {site.operands[1]} = {_fmt(b)}", regs)
            return None
        if site.kind == "check_exception":
            return self._check_exception(site, regs)
        raise self.failure(f"unknown protocol site kind {site.kind}")

    def _check_exception(self, site, regs):
        vector, code = site.operands
        got = self.vm.read_u64(L.EXC_VECTOR) & 0xFF
        error_code = self.vm.read_u64(L.EXC_ERROR_CODE)
        self.vm.write_u64(L.EXC_RESUME, 0)
        self.vm.write_u64(L.EXC_VECTOR, 0xFF)
        if got == 0xFF:
            raise self.failure(f"at {site.origin}: expected {vector_name(vector)}, but no exception was raised "
                               f"(`{site.text}`)", regs)
        if got != vector:
            raise self.failure(f"at {site.origin}: expected {vector_name(vector)}, got {vector_name(got)} "
                               f"(error code {error_code:#x}) (`{site.text}`)", regs)
        if code is not None:
            want = self._eval(site, code, regs)
            if error_code != want:
                raise self.failure(f"at {site.origin}: {vector_name(vector)} error code: expected {want:#x}, "
                                   f"got {error_code:#x} (`{site.text}`)", regs)
        return None

    def _eval(self, site, value: P.Value, regs, vcpu=None) -> int:
        """A protocol Value (checked when the guest was assembled) from the vCPU's registers."""
        vcpu = vcpu or self.vcpu
        try:
            return value.evaluate(regs, vcpu.get_sregs() if value.needs_sregs else None, self.symbols)
        except P.OperandError as e:
            raise self.failure(f"at {site.origin}: `{site.text}`: {e}") from None

    # --- diagnostics ---------------------------------------------------------------------------

    def exception_record(self) -> dict[str, int]:
        """What the handlers recorded for the last caught exception (GUEST_ASSERT_RAISES)."""
        return {"vector": self.vm.read_u64(L.EXC_VECTOR), "error_code": self.vm.read_u64(L.EXC_ERROR_CODE),
                "rip": self.vm.read_u64(L.EXC_RIP), "cr2": self.vm.read_u64(L.EXC_CR2)}

    def state(self, vcpu=None) -> str:
        """Mode, registers and segment state, for failure reports."""
        vcpu = vcpu or self.vcpu
        try:
            regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
        except KvmtestError as e:
            return f"(vCPU state unreadable: {e})"
        return describe_state(self.mode.name, regs, sregs)

    def _trace(self) -> str:
        return "recent ioctls and exits:\n  " + "\n  ".join(_ioctl.recent(12))

    def failure(self, message: str, regs=None, vcpu=None) -> GuestFailure:
        return GuestFailure(f"{self.name} ({self.mode.name}): {message}\n{self.state(vcpu)}\n{self._trace()}")

    # --- more vCPUs, migration ------------------------------------------------------------------

    def in_thread(self, vcpu=None, *, until_done: bool = True, timeout: float | None = None) -> "VcpuThread":
        """Run a vCPU on its own thread (run_to_done, or a single run() when until_done is False);
        `.join()` returns what it returned or raises what it raised."""
        target = self.run_to_done if until_done else self.run
        if timeout is not None:  # here, not in the thread, so the caller sees the error at once
            timeout = validate.timeout(timeout, f"Guest {self.name!r} in_thread timeout")
        return VcpuThread(lambda: target(timeout, vcpu))

    def add_vcpu(self, entry: int | str, *, mode=None, stack: int | None = None):
        """Another vCPU in the same VM, starting at `entry` in `mode` (default: the guest's), with
        its own stack. Modes must share the guest's tables: same IDT format (e.g. long64,
        compat32 and their CPL3 variants together)."""
        from ..cpuid import has_feature

        m = get_mode(mode) if mode else self.mode
        if m.handler_bits != self.mode.handler_bits or m.paging != self.mode.paging:
            raise KvmtestError(f"{self.name}: a {m.name} vCPU cannot share the tables of a {self.mode.name} guest")
        # RIP and RSP hold a `code_bits` offset in this mode (CS and SS bases are 0).
        rip = validate.int_in(self._address(entry), 0, (1 << m.code_bits) - 1, f"{self.name} add_vcpu entry ({m.name})")
        if stack is not None:
            stack = validate.int_in(stack, 0, (1 << m.code_bits) - 1, f"{self.name} add_vcpu stack ({m.name})")
        vcpu = self.vm.create_vcpu(len(self.vm.vcpus))
        vcpu.timeout = self.vcpu.timeout
        vcpu.set_cpuid(self.kvm.cached_supported_cpuid())
        cr3 = self.page_tables.cr3 if self.page_tables else 0
        want = mode_sregs(m, vcpu.get_sregs(), cr3, has_feature(self.kvm.cached_supported_cpuid(), "nx"))
        vcpu.set_sregs(want)
        self._check_mode_entered(want, vcpu.get_sregs())
        regs = vcpu.get_regs()
        regs.rip = rip
        regs.rsp = stack if stack is not None else initial_stack(m) - 0x400 * len(self.vm.vcpus)
        regs.rflags = initial_rflags(m)
        vcpu.set_regs(regs)
        return vcpu

    def migrate(self) -> None:
        """Move the guest to a fresh VM as live migration does: save the whole VM (setup,
        memslots and their dirty pages, irqchip, PIT, kvmclock, every vCPU; kvmtest.vm_state),
        rebuild it in a new VM, read every piece back to prove the copy, then close the old VM.
        vCPUs are replaced: take them from `vm.vcpus` (or `self.vcpu`) afterwards. What cannot be
        carried is refused by name and the guest stays in its VM (kvmtest.state.CannotCarry): an
        exit still awaiting respond(), a vCPU inside KVM_RUN, a raw ioctl nothing records."""
        from .. import vm_state

        if self.vm.closed:
            raise ClosedError(f"{self.name}: cannot migrate a closed guest (its VM {self.vm.name} is closed)")
        index = self.vm.vcpus.index(self.vcpu)
        saved = vm_state.save_vm(self.vm)
        new_vm = vm_state.restore_vm(self.kvm, saved)
        old, self.vm, self.vcpu = self.vm, new_vm, new_vm.vcpus[index]
        if self.page_tables:
            self.page_tables.vm = self.page_tables.alloc.vm = new_vm
        if self._owns_vm:
            old.close()
        self._owns_vm = True

    def close(self):
        if self._owns_vm and self.vm is not None:
            self.vm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VcpuThread:
    """A vCPU's run loop on a thread; join() hands back its result or re-raises its error."""

    def __init__(self, body):
        import threading

        self._result, self._error = None, None

        def run():
            try:
                self._result = body()
            except BaseException as e:  # re-raised in the joining thread
                self._error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float = 60):
        import threading

        timeout = validate.timeout(timeout, "VcpuThread.join timeout")
        self.thread.join(min(timeout, threading.TIMEOUT_MAX))  # a huge timeout is fine, not an OverflowError
        if self.thread.is_alive():
            raise GuestTimeout(f"vCPU thread still running after {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._result


def _protocol_port(exit_) -> int | None:
    """The protocol command an exit carries, or None for an exit the test should see."""
    if isinstance(exit_, IoExit):
        return exit_.port if exit_.is_out and exit_.port in P.PROTOCOL_PORTS else None
    if isinstance(exit_, MmioExit) and exit_.is_write and exit_.len == 1:
        offset = exit_.phys_addr - L.PROTOCOL_MMIO
        if 0 <= offset < len(P.PROTOCOL_PORTS):
            return P.PORT_DONE + offset
    return None


def page_size_invalid(mode, page_size) -> bool:
    return bool(mode.paging) and page_size not in mode.page_sizes


def describe_state(mode_name, regs, sregs) -> str:
    gprs = " ".join(f"{n}={getattr(regs, n):#x}" for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"))
    return (f"guest state (mode {mode_name}, KVM says {describe_mode(sregs)}): rip={regs.rip:#x} "
            f"rflags={regs.rflags:#x} {gprs}\n  cs={sregs.cs.selector:#x}(base {sregs.cs.base:#x} "
            f"l={sregs.cs.l} db={sregs.cs.db} dpl={sregs.cs.dpl}) ss={sregs.ss.selector:#x} "
            f"cr0={sregs.cr0:#x} cr2={sregs.cr2:#x} cr3={sregs.cr3:#x} cr4={sregs.cr4:#x} efer={sregs.efer:#x}")


def _fmt(v):
    return f"{v:#x}" if isinstance(v, int) else repr(v)
