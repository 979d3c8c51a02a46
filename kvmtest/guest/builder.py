"""Guest: a VM with one vCPU (or more) running a piece of assembly in a chosen CPU mode.

    with Guest(kvm, "long64", "mov al, 0x42; out 0x10, al; GUEST_DONE") as g:
        exit = g.run()              # IoExit(port=0x10)
        g.run_to_done()

This module builds: it lays out GDT, IDT, TSS, exception handlers, per-vCPU exception records
and page tables (kvmtest.guest.layout), assembles the source, and sets each vCPU's registers for
its mode. Running and the host half of the guest/host protocol are kvmtest.guest.runloop's
(g.run(), g.run_to_done(), ...), failure messages and state dumps kvmtest.guest.diagnostics's
(g.failure(), g.state(), g.exception_record()); Guest has both as bases.
"""

import functools
import operator
import struct
from pathlib import Path

from .. import validate
from ..asm import Section, assemble_sections
from ..errors import AssemblyError, BadArgumentError, ClosedError, GuestFailure, KvmtestError
from ..memory import PageAllocator
from ..x86 import ERROR_CODE_VECTORS, PTE_P, PTE_RW, PTE_US, SYS_TYPE_INT_GATE, SYS_TYPE_INT_GATE16, SYS_TYPE_TRAP_GATE
from . import descriptors as D
from . import exc_records
from . import layout as L
from . import protocol as P
from .compose import Composer, guests_dir
from .modes import CpuMode, gdt_entries, get_mode, initial_rflags, initial_stack, mode_sregs, tr_loaded_busy
from .paging import GiB1, KiB4, PageTables
from .runloop import DEFAULT_MAX_EXITS, GuestRunLoop

RESET_ROM = 0xFFFF0000  # 64 KiB at the top of 4 GiB: the reset vector of a mode that starts from reset


def _symbols() -> dict[str, int]:
    """The assembler symbols every guest has: the layout's names and the protocol's ports (a new
    dict each call; the modules' constants are read once)."""
    return dict(_base_symbols())


@functools.cache
def _base_symbols() -> dict[str, int]:
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
    return _handler_section_in(guests_dir(), mode.handler_bits, mode.protected)


@functools.lru_cache(maxsize=16)
def _handler_section_in(folder: Path, bits: int, protected: bool) -> Section:
    """The handler section with the common handler guests/handlers<bits>.S of `folder`, its file
    read once per process and folder: every guest needs it, and reading it for each one cost a
    file read per guest (over 9p, milliseconds inside a VM under `kvmtest run --kernel`). Guest
    sources do not change during a session; a new process, or another KVMTEST_GUESTS_DIR, reads
    the file afresh."""
    path = folder / f"handlers{bits}.S"
    return _handler_section_of(bits, protected, path.name, path.read_text())


@functools.lru_cache(maxsize=16)
def _handler_section_of(bits: int, protected: bool, common_name: str, common_text: str) -> Section:
    """The handler section of a mode with `bits`-bit handlers, `protected` or not, whose common
    handler is `common_text` (guests/handlers<bits>.S). Splitting its ~1,000 statements took longer
    than the rest of a guest's build, and every guest of a mode has the same: each is split once.
    A Section is frozen (its statements a tuple of frozen Statements), so guests can share one."""
    lines = []

    def push(value):
        # Keystone pushes 32 bits for push imm in 16-bit code unless it is `word ptr` and fits
        # an imm8, so 16-bit stubs spell PUSH imm16 (68 iw) out.
        return f"push {value}" if bits != 16 else f".byte 0x68\n.word {value}"

    for v in range(256):
        lines.append(f"kt_stub_{v}:")
        if v not in ERROR_CODE_VECTORS or not protected:
            lines.append(push(0))
        lines += [push(v), "jmp kt_exc_common"]
    stubs = Section.from_text("stubs", L.HANDLERS, bits, "\n".join(lines))
    common = Section.from_text(common_name, 0, bits, common_text)
    return Section("handlers", L.HANDLERS, bits, stubs.statements + common.statements)


_stub_addresses = operator.itemgetter(*(f"kt_stub_{v}" for v in range(256)))  # labels -> 256 addresses


@functools.cache
def _gdt_runs() -> tuple[tuple[int, bytes], ...]:
    """The GDT every protected-mode guest gets (modes.gdt_entries) as (offset, bytes) writes, in
    its order, entries that follow each other joined: one write instead of one per descriptor."""
    runs: list[tuple[int, bytes]] = []
    for selector, raw in gdt_entries().items():
        if runs and runs[-1][0] + len(runs[-1][1]) == selector:
            runs[-1] = (runs[-1][0], runs[-1][1] + raw)
        else:
            runs.append((selector, raw))
    return tuple(runs)


@functools.lru_cache(maxsize=16)
def _ivt(stubs: tuple[int, ...]) -> bytes:
    """The real-mode IVT: vector v at 0:stubs[v]. Encoded once per handler layout, not per guest."""
    return b"".join(D.ivt_entry(0, stub) for stub in stubs)


@functools.lru_cache(maxsize=16)
def _idt(bits: int, selector: int, stubs: tuple[int, ...]) -> bytes:
    """The IDT of a mode with `bits`-bit handlers in code segment `selector`: vector v an
    interrupt gate to stubs[v], in 32- and 64-bit IDTs with DPL 3 for #BP and #OF (INT3 and INTO
    from CPL3), else DPL 0. Encoded once per handler layout, not per guest: 256 gates were a
    large part of a build."""
    if bits == 64:
        gates = [D.gate(stub, selector, SYS_TYPE_INT_GATE, 3 if v in (3, 4) else 0, bits=64)
                 for v, stub in enumerate(stubs)]
    elif bits == 32:
        gates = [D.gate(stub, selector, SYS_TYPE_INT_GATE, 3 if v in (3, 4) else 0) for v, stub in enumerate(stubs)]
    else:
        gates = [D.gate(stub, selector, SYS_TYPE_INT_GATE16, 0, bits=16) for stub in stubs]
    return b"".join(gates)


class Guest(GuestRunLoop):
    """A VM with memory, one vCPU in `mode`, and `source` loaded at layout.CODE.

    `mode`: a CpuMode or its name (kvmtest.guest.modes); `source`: guest assembly with kvmtest's
    macros; `page_size`: bytes per page of the identity map in paged modes; `timeout`: seconds
    per KVM_RUN; `symbols`: extra assembler symbols (name -> int); `mem_size`: bytes of slot 0;
    `max_exits`: events one run() may pass; `vm`: build in this Vm (not closed with the guest);
    `identity_size`: bytes identity-mapped from 0; `user_pages`: U/S=1 in the page tables (default:
    at CPL3); `irqchip`: KVM_CREATE_IRQCHIP first; `nxe`: IA32_EFER.NXE in PAE and 4/5-level paging
    (default None: set where KVM reports NX; False: clear, so the XD bit is reserved). Bad values
    raise BadArgumentError; a mode or page size the host cannot give, KvmtestError; source that
    does not assemble, AssemblyError.
    """

    def __init__(self, kvm, mode, source: str, *, page_size: int = KiB4, timeout: float | None = None,
                 symbols: dict[str, int] | None = None, name: str = "guest", mem_size: int = L.MEM_SIZE,
                 max_exits: int = DEFAULT_MAX_EXITS, vm=None, identity_size: int = L.IDENTITY_SIZE,
                 user_pages: bool | None = None, irqchip: bool = False, nxe: bool | None = None):
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
        if nxe is not None and not isinstance(nxe, bool):
            raise BadArgumentError(f"Guest {name!r} nxe: expected True, False or None, got {nxe!r:.80}")
        self.nxe = nxe
        self.output: list[str] = []
        self.syncs: list[int] = []
        self._vcpu_modes: dict[int, CpuMode] = {}
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
            raise KvmtestError("1 GiB pages need CPU feature pdpe1gb (CPUID.80000001H:EDX[26]), "
                               "which KVM_GET_SUPPORTED_CPUID does not report")
        if mode.paging and self.page_size not in mode.page_sizes:
            raise KvmtestError(f"mode {mode.name} has no {self.page_size:#x}-byte pages "
                               f"(it has {', '.join(hex(s) for s in mode.page_sizes) or 'no paging'})")
        vm = self.vm
        if not vm.memslots:
            vm.add_memory(0, mem_size)
        self.vcpu = vm.create_vcpu(len(vm.vcpus))
        if timeout is not None:
            self.vcpu.timeout = timeout
        self._record_vcpu(self.vcpu, mode)

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
        self._install_tables()
        if mode.from_reset:
            self._install_reset_vector()  # the vCPU keeps its reset state: no registers to set
        else:
            self._enter_mode(self.vcpu, mode, self.entry, initial_stack(mode))

    def _record_vcpu(self, vcpu, mode: CpuMode) -> None:
        """Give a new vCPU KVM's supported CPUID and its own, cleared exception record."""
        index = exc_records.check_index(vcpu.id, f"{self.name} {vcpu.name}")
        vcpu.set_cpuid(self.kvm.cached_supported_cpuid())
        exc_records.clear(self.vm, index)
        self._vcpu_modes[vcpu.id] = mode

    def _enter_mode(self, vcpu, mode: CpuMode, rip: int, rsp: int) -> None:
        """Put `vcpu` in `mode` (KVM_SET_SREGS, checked by reading it back) with GS at its
        exception record, then at `rip` with stack `rsp` (KVM_SET_REGS)."""
        from ..cpuid import has_feature

        nx = has_feature(self.kvm.cached_supported_cpuid(), "nx") if self.nxe is None else self.nxe
        if nx and self.nxe and not has_feature(self.kvm.cached_supported_cpuid(), "nx"):
            raise KvmtestError(f"{self.name}: EFER.NXE needs CPU feature nx, which KVM does not report")
        cr3 = self.page_tables.cr3 if self.page_tables else 0
        want = mode_sregs(mode, vcpu.get_sregs(), cr3, nx)
        exc_records.point_gs_at(want, self._record_index(vcpu), mode.protected)
        self.set_sregs(want, vcpu)
        self._check_mode_entered(mode, want, vcpu.get_sregs())
        regs = vcpu.get_regs()
        regs.rip, regs.rsp, regs.rflags = rip, rsp, initial_rflags(mode)
        vcpu.set_regs(regs)

    def _install_tables(self):
        mode, vm = self.mode, self.vm
        if mode.uses_gdt:
            for offset, raw in _gdt_runs():
                vm.write(L.GDT + offset, raw)
        stubs = _stub_addresses(self.labels)
        if not mode.protected:
            vm.write(L.IVT, _ivt(stubs))
            return
        if mode.handler_bits == 64:
            vm.write(L.TSS, D.tss64(L.KERNEL_STACK_TOP))
        else:
            vm.write(L.TSS, D.tss32(L.KERNEL_STACK_TOP, L.SEL_DATA if mode.handler_bits == 32 else L.SEL_DATA16))
        vm.write(L.IDT, _idt(mode.handler_bits, mode.handler_code_selector, stubs))

    def _install_reset_vector(self):
        # The vCPU starts at F000:FFF0 (linear 0xFFFFFFF0, SDM Vol. 3A 10.1.4): a far jump to 0:CODE.
        rom = self.vm.add_memory(RESET_ROM, 0x10000)
        rom.mapping.write(0xFFF0, bytes([0xEA]) + struct.pack("<HH", self.entry, 0) + b"\xf4")

    def _install_paging(self, mem_size):
        fmt = self.mode.page_table_format
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

    def _check_mode_entered(self, mode: CpuMode, want, got):
        """KVM_SET_SREGS must leave the vCPU in the state written (api.rst 4.13/4.14); a guest
        that silently ran in another mode would pass or fail for the wrong reason, and one whose
        GS base was dropped would write another vCPU's exception record."""
        diffs = [f"{name} wrote {getattr(want, name):#x} read {getattr(got, name):#x}"
                 for name in ("cr0", "cr3", "cr4", "efer") if getattr(want, name) != getattr(got, name)]
        for seg in ("cs", "ss"):
            w, g = getattr(want, seg), getattr(got, seg)
            if (w.selector, w.l, w.db, w.dpl) != (g.selector, g.l, g.db, g.dpl):
                diffs.append(f"{seg} wrote sel={w.selector:#x} l={w.l} db={w.db} dpl={w.dpl}, "
                             f"read sel={g.selector:#x} l={g.l} db={g.db} dpl={g.dpl}")
        if want.gs.base != got.gs.base:
            diffs.append(f"gs base wrote {want.gs.base:#x} read {got.gs.base:#x}")
        if diffs:
            raise GuestFailure(f"{self.name}: cannot put the vCPU in mode {mode.name}: KVM_SET_SREGS "
                               f"succeeded but KVM_GET_SREGS differs: {'; '.join(diffs)}")

    # --- test-specific tables ------------------------------------------------------------------

    def set_idt_gate(self, vector: int, target: int | str, *, dpl: int = 0, gate_type: int = SYS_TYPE_INT_GATE,
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
        if bits == 16 and gate_type in (SYS_TYPE_INT_GATE, SYS_TYPE_TRAP_GATE):
            gate_type -= 8  # the 16-bit gate types
        default = self.mode.handler_code_selector
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

    # --- more vCPUs, migration ------------------------------------------------------------------

    def add_vcpu(self, entry: int | str, *, mode=None, stack: int | None = None):
        """Another vCPU in the same VM, starting at `entry` (an address or a label) in `mode`
        (default: the guest's), with its own stack (default: below the other vCPUs') and its own
        exception record. Modes must share the guest's tables: same IDT format and paging (e.g.
        long64, compat32 and their CPL3 variants together). Returns the kvmtest.vcpu.Vcpu."""
        m = get_mode(mode) if mode else self.mode
        if not m.shares_tables_with(self.mode):
            raise KvmtestError(f"{self.name}: a {m.name} vCPU cannot share the tables of a {self.mode.name} guest")
        # RIP and RSP hold a `code_bits` offset in this mode (CS and SS bases are 0).
        rip = validate.int_in(self._address(entry), 0, (1 << m.code_bits) - 1, f"{self.name} add_vcpu entry ({m.name})")
        if stack is not None:
            stack = validate.int_in(stack, 0, (1 << m.code_bits) - 1, f"{self.name} add_vcpu stack ({m.name})")
        exc_records.check_index(len(self.vm.vcpus), f"{self.name} add_vcpu")  # before KVM_CREATE_VCPU
        vcpu = self.vm.create_vcpu(len(self.vm.vcpus))
        vcpu.timeout = self.vcpu.timeout
        self._record_vcpu(vcpu, m)
        rsp = stack if stack is not None else initial_stack(m) - 0x400 * len(self.vm.vcpus)
        self._enter_mode(vcpu, m, rip, rsp)
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
        if not tr_loaded_busy():
            # restore_vm wrote (and checked) the saved TR, which SVM reports busy; under TCG the
            # vCPUs that run on get it loadable again, as every other sregs write for a guest.
            for vcpu in new_vm.vcpus:
                self.set_sregs(vcpu.get_sregs(), vcpu)
        if self.page_tables:
            self.page_tables.vm = self.page_tables.alloc.vm = new_vm
        if self._owns_vm:
            old.close()
        self._owns_vm = True

    def close(self):
        """Close the VM if the guest made it (not one passed as `vm`)."""
        if self._owns_vm and self.vm is not None:
            self.vm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
