"""The host fingerprint: what a report needs to say which KVM host it came from.

Kernel, CPU, KVM modules and their parameters, MMU mode (and how it was decided), API
version, every capability, a hash of the supported CPUID, tool versions.
"""

import hashlib
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

import kvmtest

from .cpuid import has_feature

INTERESTING_FLAGS = ("vmx", "svm", "ept", "npt", "hypervisor", "la57", "pku", "smep", "smap", "pcid",
                     "invpcid", "x2apic", "tsc_deadline_timer", "pdpe1gb", "nx", "lm", "umip")
KVM_MODULES = ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def cpu_info(cpuinfo_text: str | None = None) -> dict:
    """The host CPU from /proc/cpuinfo's first processor (or `cpuinfo_text`): vendor, model name,
    family, model and stepping as integers, and each of INTERESTING_FLAGS as name -> present."""
    text = _read("/proc/cpuinfo") if cpuinfo_text is None else cpuinfo_text
    first = text.split("\n\n", 1)[0]
    fields = {}
    for line in first.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {
        "vendor": fields.get("vendor_id", ""),
        "model_name": fields.get("model name", ""),
        "family": int(fields.get("cpu family", "0") or 0),
        "model": int(fields.get("model", "0") or 0),
        "stepping": int(fields.get("stepping", "0") or 0) if fields.get("stepping", "").isdigit() else 0,
        "flags": {f: (f in flags) for f in INTERESTING_FLAGS},
    }


def kvm_modules(sys_module: str = "/sys/module") -> dict[str, dict[str, str]]:
    """Loaded KVM modules and their parameters (module -> {param: value})."""
    found = {}
    for name in KVM_MODULES:
        base = Path(sys_module) / name
        if not base.is_dir():
            continue
        params = {}
        pdir = base / "parameters"
        if pdir.is_dir():
            for p in sorted(pdir.iterdir()):
                params[p.name] = _read(str(p))
        found[name] = params
    return found


def mmu_mode(modules: dict[str, dict[str, str]]) -> dict[str, str]:
    """EPT, NPT, TDP MMU or shadow paging, from the module parameters, with the reasoning."""
    yes = lambda v: v in ("Y", "1", "y")  # noqa: E731
    tdp_mmu = yes(modules.get("kvm", {}).get("tdp_mmu", "N"))
    if "kvm_intel" in modules:
        if yes(modules["kvm_intel"].get("ept", "N")):
            return {"mode": "ept-tdp-mmu" if tdp_mmu else "ept",
                    "how": f"kvm_intel.ept=Y, kvm.tdp_mmu={'Y' if tdp_mmu else 'N'}"}
        return {"mode": "shadow", "how": "kvm_intel.ept=N"}
    if "kvm_amd" in modules:
        if yes(modules["kvm_amd"].get("npt", "N")):
            return {"mode": "npt-tdp-mmu" if tdp_mmu else "npt",
                    "how": f"kvm_amd.npt=Y, kvm.tdp_mmu={'Y' if tdp_mmu else 'N'}"}
        return {"mode": "shadow", "how": "kvm_amd.npt=N"}
    if "kvm_pvm" in modules:
        return {"mode": "shadow", "how": "kvm_pvm loaded: PVM has no two-dimensional paging, "
                                         f"kvm.tdp_mmu={'Y' if tdp_mmu else 'N'}"}
    return {"mode": "unknown", "how": "no kvm_intel, kvm_amd or kvm_pvm module found"}


def module_versions(sys_module: str = "/sys/module") -> dict[str, str]:
    """srcversion (else version) of each loaded KVM module built as a module; built-in ones have neither."""
    out = {}
    for name in KVM_MODULES:
        base = Path(sys_module) / name
        value = _read(str(base / "srcversion")) or _read(str(base / "version"))
        if value:
            out[name] = value
    return out


def build_id(fp: dict) -> str:
    """The host build a known-issue entry records it was seen on: kernel release and build line
    (`uname -r`, `uname -v`), plus the srcversion of each KVM module loaded as a module, so a
    rebuilt kernel or module with the same release number is still a different build."""
    kernel = fp.get("kernel", {})
    text = f"{kernel.get('release', '?')} {kernel.get('version', '?')}"
    mods = fp.get("module_versions", {})
    return text + "".join(f" {m}:{v}" for m, v in sorted(mods.items()))


# KVM_GET_SUPPORTED_CPUID passes through fields that name the host CPU the ioctl ran on (SDM Vol. 2A
# CPUID; AMD APM Vol. 3 E.4.x): they differ from one CPU of the same host to the next, so the table's
# hash leaves them out. (leaf, register) -> mask of the bits kept.
_PER_CPU_FIELDS = {
    (0x1, "ebx"): 0x00FFFFFF,      # EBX[31:24] initial APIC ID
    (0xB, "edx"): 0,               # x2APIC ID of the current logical processor
    (0x1F, "edx"): 0,              # the same, V2 extended topology
    (0x8000001E, "eax"): 0,        # AMD extended APIC ID
    (0x8000001E, "ebx"): 0xFFFFFF00,  # AMD compute unit / core ID in EBX[7:0]
    (0x8000001E, "ecx"): 0xFFFFFF00,  # AMD node ID in ECX[7:0]
}


def cpuid_entry_identity(entry) -> bytes:
    """One supported-CPUID entry as bytes for the fingerprint hash, without the per-CPU fields."""
    masked = type(entry).from_buffer_copy(bytes(entry))
    for (leaf, reg), keep in _PER_CPU_FIELDS.items():
        if masked.function == leaf:
            setattr(masked, reg, getattr(masked, reg) & keep)
    return bytes(masked)


def backend(modules) -> str:
    """The vendor module KVM runs on: the first of kvm_intel, kvm_amd, kvm_pvm loaded in `modules`
    (kvm_modules()' module -> parameters map), else "unknown"."""
    for name in ("kvm_intel", "kvm_amd", "kvm_pvm"):
        if name in modules:
            return name
    return "unknown"


def _versions() -> dict[str, str]:
    import pytest

    try:
        from importlib.metadata import version
        keystone_version = version("keystone-engine")
    except Exception:
        keystone_version = "unknown"
    return {"kvmtest": kvmtest.__version__, "pytest": pytest.__version__, "keystone": keystone_version,
            "python": platform.python_version()}


def collect(device: str = "/dev/kvm") -> dict:
    """The full fingerprint. KVM facts are left out (with the reason) when the device cannot be opened."""
    uname = os.uname()
    modules = kvm_modules()
    fp: dict[str, Any] = {  # a JSON document: each key holds its own kind of value
        "host": socket.gethostname(),
        "kernel": {"release": uname.release, "version": uname.version, "machine": uname.machine,
                   "cmdline": _read("/proc/cmdline")},
        "cpu": cpu_info(),
        "modules": modules,
        "module_versions": module_versions(),
        "backend": backend(modules),
        # what runs this kernel: "tcg" or "kvm" when `kvmtest run --kernel` booted it in QEMU
        # (kernelvm/inner.py sets KVMTEST_ACCELERATOR), "none" for a run straight on the host
        "accelerator": os.environ.get("KVMTEST_ACCELERATOR") or "none",
        "mmu": mmu_mode(modules),
        "versions": _versions(),
        "kvm": None,
    }
    try:
        from .kvm import Kvm
        from .mmu import probe

        with Kvm(device) as kvm:
            fp["mmu"].update({f"probe_{k}": v for k, v in probe(kvm).items()})
            cpuid = kvm.supported_cpuid()
            digest = hashlib.sha256()
            for e in sorted(cpuid, key=lambda e: (e.function, e.index)):
                digest.update(cpuid_entry_identity(e))
            fp["kvm"] = {
                "device": device,
                "api_version": kvm.api_version(),
                "capabilities": kvm.capabilities(),
                "supported_cpuid_sha256": digest.hexdigest(),
                "supported_cpuid_entries": len(cpuid),
                "cpu_features": {name: has_feature(cpuid, name) for name in ("la57", "pku", "smep", "smap",
                                 "pcid", "invpcid", "x2apic", "tsc_deadline", "nx", "pdpe1gb", "umip", "xsave")},
            }
    except Exception as e:  # the fingerprint must not break a run; it says why KVM facts are missing
        fp["kvm_error"] = str(e)
    return fp


def short(fp: dict) -> str:
    """One line for the pytest header and report titles."""
    cpu = fp["cpu"]
    kvm = fp.get("kvm")
    caps = sum(1 for v in kvm["capabilities"].values() if v) if kvm else 0
    kvm_text = f"API {kvm['api_version']}, {caps} capabilities" if kvm else f"KVM unavailable ({fp.get('kvm_error')})"
    return (f"kernel {fp['kernel']['release']}, {cpu['model_name'] or cpu['vendor']} "
            f"(family {cpu['family']} model {cpu['model']} stepping {cpu['stepping']}), "
            f"backend {fp['backend']}, MMU {fp['mmu']['mode']}, {kvm_text}")


def flat_properties(fp: dict) -> dict[str, str]:
    """The fingerprint as flat name/value pairs for JUnit <property> elements."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value if isinstance(value, str) else json.dumps(value)

    walk("", {k: v for k, v in fp.items() if k != "modules"})
    out["build"] = build_id(fp)
    for mod, params in fp.get("modules", {}).items():
        for k, v in params.items():
            out[f"module.{mod}.{k}"] = v
    return {f"kvmtest.{k}": v for k, v in out.items()}


def capability(fp: dict, name: str) -> int:
    """KVM_CHECK_EXTENSION's value for capability `name` (with or without KVM_CAP_) as fingerprint
    `fp` recorded it; 0 when it is absent or KVM could not be opened."""
    kvm = fp.get("kvm") or {}
    return kvm.get("capabilities", {}).get(name if name.startswith("KVM_CAP_") else f"KVM_CAP_{name}", 0)

