"""The kernel under test: a bzImage/vmlinuz path, a kernel tree, or a fetched Debian kernel.

Fetched kernels live in a cache directory (never in the host's /boot or /lib/modules):
<cache>/<release>/boot/vmlinuz-<release> with its modules in <cache>/<release>/lib/modules/<release>,
the layout a .deb unpacks to, so virtme-ng finds the modules beside the image by itself.
"""

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from . import KernelVmError

METADATA = "kvmtest-kernel.json"  # what was fetched: package, version, release
CURRENT = "{distro}.json"         # <cache>/debian.json names the release `--kernel debian` boots


def cache_dir() -> Path:
    """KVMTEST_KERNEL_CACHE, else ~/.cache/kvmtest/kernels (XDG_CACHE_HOME honoured)."""
    if os.environ.get("KVMTEST_KERNEL_CACHE"):
        return Path(os.environ["KVMTEST_KERNEL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvmtest" / "kernels"


def image_release(path: str | Path) -> str:
    """The release string a bzImage carries in its setup header (x86 boot protocol 2.00+).

    Documentation/arch/x86/boot.rst: the header's "HdrS" magic sits at 0x202 and the 16-bit
    kernel_version field at 0x20e points (minus 0x200) at a NUL-terminated version string
    whose first word is the release, e.g. "6.1.0-57-amd64 (debian-kernel@...) #1 SMP ...".
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(0x10000)
    except OSError as e:
        raise KernelVmError(f"kernel image {path}: cannot read it: {e.strerror}") from None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise KernelVmError(f"kernel image {path}: no x86 boot header ('HdrS' at 0x202); "
                            "pass a bzImage/vmlinuz, not an ELF vmlinux or a compressed file")
    (offset,) = struct.unpack_from("<H", head, 0x20E)
    start = offset + 0x200
    if offset == 0 or start >= len(head):
        raise KernelVmError(f"kernel image {path}: boot header has no kernel_version string")
    text = head[start:head.index(b"\0", start) if b"\0" in head[start:] else len(head)]
    release = text.decode("ascii", "replace").split(" ", 1)[0]
    if not release:
        raise KernelVmError(f"kernel image {path}: empty kernel_version string")
    return release


@dataclass(frozen=True)
class Kernel:
    """What `--kernel` named: the image virtme-ng boots, its release, where it came from."""

    image: Path
    release: str
    source: str          # "debian linux-image-6.1.0-57-amd64 6.1.192-3" or the path given
    moddir: Path | None  # its modules, when known (a tree's modules are virtme-ng's business)


def fetched(release_dir: Path) -> Kernel | None:
    """The kernel recorded in <cache>/<release>/kvmtest-kernel.json, if complete."""
    try:
        meta = json.loads((release_dir / METADATA).read_text())
    except (OSError, ValueError):
        return None
    image = release_dir / meta.get("image", "")
    if not meta.get("image") or not image.is_file():
        return None
    moddir = release_dir / meta["moddir"] if meta.get("moddir") else None
    return Kernel(image, meta["release"], f"{meta.get('distro', 'debian')} {meta['package']} {meta['version']}",
                  moddir)


def resolve(spec: str, cache: Path | None = None) -> Kernel:
    """`--kernel debian` (the last fetched Debian kernel), a kernel tree, or an image path."""
    cache = cache or cache_dir()
    if spec == "debian":
        try:
            release = json.loads((cache / CURRENT.format(distro="debian")).read_text())["release"]
        except (OSError, ValueError, KeyError):
            raise KernelVmError(f"--kernel debian: no Debian kernel in {cache}; "
                                "run `kvmtest kernel fetch debian` first") from None
        kernel = fetched(cache / release)
        if kernel is None:
            raise KernelVmError(f"--kernel debian: {cache / release} is incomplete (no {METADATA} or image); "
                                "run `kvmtest kernel fetch debian` again")
        return kernel
    path = Path(spec)
    if path.is_dir():  # a kernel tree: virtme-ng finds arch/x86/boot/bzImage and its modules
        image = path / "arch/x86/boot/bzImage"
        if not image.is_file():
            raise KernelVmError(f"--kernel {spec}: a directory without arch/x86/boot/bzImage (build the kernel first)")
        return Kernel(image.resolve(), image_release(image), f"tree {path.resolve()}", None)
    if not path.exists():
        raise KernelVmError(f"--kernel {spec}: no such file (give a bzImage/vmlinuz path, a kernel tree or 'debian')")
    if not path.is_file():
        raise KernelVmError(f"--kernel {spec}: not a regular file (a device, socket or pipe); give a "
                            "bzImage/vmlinuz path, a kernel tree or 'debian'")
    return Kernel(path.resolve(), image_release(path), str(path.resolve()), None)
