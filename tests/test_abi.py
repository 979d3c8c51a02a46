"""The ABI layer against the system's <linux/kvm.h>: every size, offset and ioctl number.

A small C program is generated from the ctypes definitions, compiled with the system
compiler and run; its answers are compared with ctypes. Definitions newer than the
installed header are compared with the values documented in upstream <linux/kvm.h>.
No /dev/kvm is needed.
"""

import ctypes
import shutil
import subprocess

import pytest

from kvmtest import abi
from kvmtest.abi import numbers, structs
from kvmtest.abi.ioctl_codes import IOW, IOWR, ioc_size

# ctypes paths that C spells differently (anonymous unions in the kernel's structures).
C_PATH = {
    "kvm_irq_routing_entry.u.msi.devid": "u.msi.devid",
    "kvm_xen_exit.hcall.": "u.hcall.",  # union { struct {...} hcall; } u
    "kvm_xen_exit.hcall": "u.hcall",
    "kvm_run.exit.xen.hcall.": "xen.u.hcall.",
    "kvm_run.exit.xen.hcall": "xen.u.hcall",
    "kvm_run.exit.hypercall.flags": "hypercall.longmode",  # union { __u32 longmode; __u64 flags; }
    "kvm_run.exit.": "",
    "kvm_run.exit": "hw",  # the union itself starts where its first member does
}

# A struct exists in the header iff its guard macro does; no guard = always present (6.1+).
GUARDS = {
    "kvm_run.exit.memory_fault": "KVM_EXIT_MEMORY_FAULT",
    "kvm_userspace_memory_region2": "KVM_SET_USER_MEMORY_REGION2",
    "kvm_create_guest_memfd": "KVM_CREATE_GUEST_MEMFD",
    "kvm_pre_fault_memory": "KVM_PRE_FAULT_MEMORY",
}

# Values documented by upstream include/uapi/linux/kvm.h for what older headers lack.
DOCUMENTED = {
    "sizeof(kvm_userspace_memory_region2)": 160,
    "kvm_userspace_memory_region2.guest_memfd_offset": 32,
    "kvm_userspace_memory_region2.guest_memfd": 40,
    "sizeof(kvm_create_guest_memfd)": 64,
    "KVM_SET_USER_MEMORY_REGION2": IOW(0xAE, 0x49, 160),
    "KVM_CREATE_GUEST_MEMFD": IOWR(0xAE, 0xD4, 64),
    "KVM_EXIT_MEMORY_FAULT": 39,
    "kvm_run.exit.memory_fault.gpa": 40,
    "KVM_MEM_GUEST_MEMFD": 4,
    "sizeof(kvm_pre_fault_memory)": 64,
    "kvm_pre_fault_memory.gpa": 0,
    "kvm_pre_fault_memory.size": 8,
    "kvm_pre_fault_memory.flags": 16,
    "KVM_PRE_FAULT_MEMORY": IOWR(0xAE, 0xD5, 64),
}


def _fields(ctype, prefix):
    """(path, offset) for every field, recursing into nested structures and unions."""
    for name, ftype, *_ in ctype._fields_:
        desc = getattr(ctype, name)
        path = f"{prefix}.{name}"
        yield path, desc.offset
        if isinstance(ftype, type) and issubclass(ftype, (ctypes.Structure, ctypes.Union)):
            for sub, off in _fields(ftype, path):
                yield sub, desc.offset + off


def _c_member(path):
    struct, _, member = path.partition(".")
    for ours, theirs in C_PATH.items():
        if path == ours or (path.startswith(ours) and ours.endswith(".")):
            return struct, theirs + path[len(ours):]
    return struct, member


def _guard(key):
    for prefix, macro in GUARDS.items():
        if key == prefix or key.startswith(prefix + "."):
            return macro
    return None


def _python_facts():
    facts = {}
    for st in structs.ABI_STRUCTS:
        name = st.__name__
        facts[f"sizeof({name})"] = ctypes.sizeof(st)
        for path, off in _fields(st, name):
            if ".pad" in path or ".reserved" in path or path.endswith(".padding"):
                continue  # padding is named differently across header versions
            facts[path] = off
    for d in numbers.IOCTLS.values():
        facts[d.name] = d.request
    for table in (abi.EXIT_REASONS, abi.CAPABILITIES, abi.MP_STATES, abi.INTERNAL_ERROR_SUBERRORS,
                  abi.SYSTEM_EVENTS, abi.MSR_EXIT_REASONS):
        facts.update(table)
    for name in dir(abi.constants):
        if name.startswith(("KVM_GUESTDBG_", "KVM_MEM_", "KVM_SYNC_X86_", "KVM_VCPUEVENT_VALID_", "KVM_MSR_FILTER_",
                            "KVM_DIRTY_LOG_", "KVM_DIRTY_GFN_", "KVM_IRQCHIP_", "KVM_EXIT_IO_", "KVM_IRQ_ROUTING_",
                            "KVM_IRQFD_FLAG_", "KVM_PIT_FLAGS_", "KVM_CLOCK_", "KVM_SREGS2_FLAGS_", "KVM_VCPU_TSC_",
                            "KVM_STATE_NESTED_FORMAT_", "KVM_STATE_NESTED_GUEST_MODE",
                            "KVM_STATE_NESTED_RUN_PENDING", "KVM_X86_SHADOW_INT_", "KVM_RUN_X86_",
                            "KVM_EXIT_XEN_", "KVM_XEN_HVM_CONFIG_",
                            "KVM_PIO_PAGE_OFFSET", "KVM_COALESCED_MMIO_PAGE_OFFSET")):
            facts[name] = getattr(abi.constants, name)
    return facts


def _c_program(facts):
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for key in facts:
        if key.startswith("sizeof("):
            st = key[7:-1]
            expr = f"sizeof(struct {st})"
            guard = _guard(st)
        elif "." in key:
            st, member = _c_member(key)
            expr = f"offsetof(struct {st}, {member})"
            guard = _guard(key)
        else:
            expr, guard = f"(unsigned long long)({key})", key
        body = f'  printf("%s %llu\\n", "{key}", (unsigned long long)({expr}));'
        lines += [f"#ifdef {guard}", body, "#endif"] if guard else [body]
    lines += ["  return 0;", "}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to check the ABI against <linux/kvm.h>"
    facts = _python_facts()
    d = tmp_path_factory.mktemp("abi")
    (d / "abi.c").write_text(_c_program(facts))
    built = subprocess.run([cc, "-o", str(d / "abi"), str(d / "abi.c")], capture_output=True, text=True)
    assert built.returncode == 0, f"the ABI probe does not compile against <linux/kvm.h>:\n{built.stderr[-3000:]}"
    out = subprocess.run([str(d / "abi")], check=True, capture_output=True, text=True).stdout
    return facts, {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_every_layout_fact_matches_the_installed_header(c_facts):
    ours, theirs = c_facts
    mismatches = [f"{k}: kvmtest={ours[k]:#x} <linux/kvm.h>={v:#x}" for k, v in theirs.items() if ours[k] != v]
    assert not mismatches, "ABI differs from <linux/kvm.h>:\n" + "\n".join(mismatches)


def test_the_header_answers_for_most_facts(c_facts):
    # Guard against a C program that silently checks nothing (all #ifdef'd away).
    ours, theirs = c_facts
    assert len(theirs) > 0.9 * (len(ours) - len(DOCUMENTED)), f"only {len(theirs)} of {len(ours)} facts were checked"


def test_definitions_newer_than_the_header_match_upstream(c_facts):
    ours, _ = c_facts
    wrong = [f"{k}: kvmtest={ours[k]:#x} upstream={v:#x}" for k, v in DOCUMENTED.items() if ours[k] != v]
    assert not wrong, "\n".join(wrong)


def test_ioctl_numbers_encode_their_argument_size():
    assert ioc_size(numbers.KVM_SET_USER_MEMORY_REGION) == ctypes.sizeof(structs.kvm_userspace_memory_region)
    assert ioc_size(numbers.KVM_GET_SREGS) == 312
    assert ioc_size(numbers.KVM_RUN) == 0


def test_kvm_run_has_the_documented_shape():
    assert ctypes.sizeof(structs.kvm_run) == 2352
    assert structs.kvm_run.exit_reason.offset == 8
    assert structs.kvm_run.exit.offset == 32
    assert structs.kvm_run.kvm_valid_regs.offset == 288


def test_names_for_unknown_values_do_not_raise():
    assert abi.EXIT_REASON_NAMES.name(2) == "KVM_EXIT_IO"
    assert abi.EXIT_REASON_NAMES.name(999) == "KVM_EXIT_unknown(999)"
    assert abi.CAPABILITY_NAMES[0x7FFF] == "KVM_CAP_unknown(32767)"
    assert abi.errno_name(17) == "EEXIST"
    assert abi.errno_name(0) == "success (0)"  # "expected EINVAL, got success (0)", not "errno0"
    assert abi.errno_name(4095) == "errno4095"
    assert numbers.ioctl_name(numbers.KVM_RUN) == "KVM_RUN"


def test_save_restore_structures_are_compared_with_the_header(c_facts):
    # The state kvmtest.state and kvmtest.vm_state carry: each of these must have been checked
    # against <linux/kvm.h> (present in every header kvmtest supports), not skipped.
    _, theirs = c_facts
    wanted = ["sizeof(kvm_pic_state)", "sizeof(kvm_ioapic_state)", "kvm_ioapic_state.redirtbl",
              "sizeof(kvm_pit_channel_state)", "kvm_pit_channel_state.count_load_time", "sizeof(kvm_pit_state2)",
              "kvm_pit_state2.flags", "sizeof(kvm_clock_data)", "kvm_clock_data.realtime", "kvm_clock_data.host_tsc",
              "sizeof(kvm_device_attr)", "sizeof(kvm_nested_state)", "kvm_nested_state.hdr",
              "KVM_GET_PIT2", "KVM_SET_PIT2", "KVM_GET_CLOCK", "KVM_SET_CLOCK", "KVM_SET_TSC_KHZ", "KVM_GET_XSAVE2",
              "KVM_GET_NESTED_STATE", "KVM_SET_NESTED_STATE", "KVM_GET_DEVICE_ATTR", "KVM_SET_DEVICE_ATTR",
              "KVM_HAS_DEVICE_ATTR", "KVM_CLOCK_REALTIME", "KVM_PIT_FLAGS_HPET_LEGACY", "KVM_VCPU_TSC_OFFSET",
              "KVM_SREGS2_FLAGS_PDPTRS_VALID"]
    missing = [k for k in wanted if k not in theirs]
    assert not missing, f"not compared with <linux/kvm.h>: {missing}"
