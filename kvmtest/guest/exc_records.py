"""Per-vCPU exception records: where the guest's exception handlers note what they caught.

Each vCPU the builder sets up has its own record of layout.EXC_RECORD_SIZE bytes, at
layout.EXC_INFO + index * EXC_RECORD_SIZE, the index being the vCPU's id (KVM_CREATE_VCPU).
Guest code finds its own vCPU's record without a register: the arming stores of
GUEST_ASSERT_RAISES (kvmtest.guest.compose) and the common handlers (guests/handlers*.S) address
its fields as gs:[EXC_*], and the builder sets the vCPU's GS base to index * EXC_RECORD_SIZE (in
real mode also GS = base / 16, SDM Vol. 3A 20.1.1), as an OS keeps per-CPU data behind GS. vCPU
0's GS base is 0, as every guest's has always been, so its record sits at the EXC_* addresses.

A vCPU the test creates itself (an AP it starts with INIT/SIPI, say) leaves reset with GS base
0 (SDM Vol. 3A Table 10-1) and so shares vCPU 0's record unless its code loads GS.

Fields, 8 bytes each (the 16-bit handlers write the low 16 bits, and leave CR2 alone):
  resume      nonzero: GUEST_ASSERT_RAISES armed the handlers to return there
  vector      the last vector caught since arming (0xFF: none)
  error_code  the error code the CPU pushed (0 for vectors without one)
  rip         the saved instruction pointer
  cr2         CR2 when the handler ran
  count       exceptions caught while armed, since the vCPU was set up
"""

from ..abi.structs import kvm_sregs
from ..errors import KvmtestError
from . import layout as L

NO_VECTOR = 0xFF
# Field -> offset in a record, from the layout's addresses of vCPU 0's fields.
_OFFSETS = {name: address - L.EXC_INFO for name, address in (
    ("resume", L.EXC_RESUME), ("vector", L.EXC_VECTOR), ("error_code", L.EXC_ERROR_CODE),
    ("rip", L.EXC_RIP), ("cr2", L.EXC_CR2), ("count", L.EXC_COUNT))}


def record_address(index: int) -> int:
    """Guest physical address of record `index` (0 to EXC_RECORDS_MAX - 1)."""
    return L.EXC_INFO + index * L.EXC_RECORD_SIZE


def check_index(index: int, what: str) -> int:
    """`index` if a record exists for it; otherwise one KvmtestError naming `what` (a vCPU)."""
    if not 0 <= index < L.EXC_RECORDS_MAX:
        raise KvmtestError(f"{what}: exception records exist for vCPU ids 0 to {L.EXC_RECORDS_MAX - 1} "
                           f"(kvmtest.guest.layout.EXC_RECORDS_MAX); this vCPU's id is {index}")
    return index


def point_gs_at(sregs: kvm_sregs, index: int, protected: bool) -> kvm_sregs:
    """Set GS in `sregs` (about to go to KVM_SET_SREGS) so gs:[EXC_*] is record `index`: the base
    (the descriptor cache's, which segment accesses use until GS is loaded again, SDM Vol. 3A
    3.4.3), and in real mode the selector that gives that base."""
    base = record_address(index) - L.EXC_INFO
    sregs.gs.base = base
    if not protected:
        sregs.gs.selector = base >> 4
    return sregs


def clear(vm, index: int) -> None:
    """Reset record `index` to "not armed, nothing caught", as a vCPU starts."""
    vm.write(record_address(index), bytes(L.EXC_RECORD_SIZE))
    vm.write_u64(record_address(index) + _OFFSETS["vector"], NO_VECTOR)


def read(vm, index: int) -> dict[str, int]:
    """Record `index` as {vector, error_code, rip, cr2, count} (the u64 fields, see above)."""
    base = record_address(index)
    return {name: vm.read_u64(base + offset) for name, offset in _OFFSETS.items() if name != "resume"}


def take_check(vm, index: int) -> tuple[int, int]:
    """(vector, error code) caught since GUEST_ASSERT_RAISES armed record `index`, the vector
    NO_VECTOR when none was; disarms the record for the next check."""
    base = record_address(index)
    vector = vm.read_u64(base + _OFFSETS["vector"]) & 0xFF
    error_code = vm.read_u64(base + _OFFSETS["error_code"])
    vm.write_u64(base + _OFFSETS["resume"], 0)
    vm.write_u64(base + _OFFSETS["vector"], NO_VECTOR)
    return vector, error_code
