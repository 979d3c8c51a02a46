"""`kvmtest kernel fetch debian [--package P]`: Debian's current linux-image-*-amd64 (or P) through
apt, into the cache.

apt does the downloading (`apt-get update`, then `apt-get download` of the package the
linux-image-amd64 metapackage depends on); nothing here opens a URL. The package is
unpacked with dpkg-deb into <cache>/<release>/ and its module index rebuilt there with
`depmod -b` (a .deb leaves modules.dep to its postinst), so the host's /boot and
/lib/modules are never touched.
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import KernelVmError
from .kernel import CURRENT, METADATA, Kernel, cache_dir, fetched

METAPACKAGE = {"amd64": "linux-image-amd64"}


def run_tool(argv: list[str], cwd: str | None = None) -> str:
    """Run an apt/dpkg/kmod tool; a missing tool or a failure is one KernelVmError naming it."""
    if shutil.which(argv[0]) is None:
        raise KernelVmError(f"{argv[0]} not found: `kvmtest kernel fetch debian` needs Debian's apt, "
                            "dpkg-deb and kmod (apt-get install kmod)")
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise KernelVmError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {' / '.join(tail) or 'no output'}")
    return proc.stdout


def image_package(depends_text: str, metapackage: str) -> str:
    """The linux-image-<release> package in `apt-cache depends <metapackage>` output."""
    found = re.findall(r"^\s*\|?Depends:\s*(linux-image-\S+)\s*$", depends_text, re.M)
    found = [p for p in found if not p.startswith("<")]
    if not found:
        raise KernelVmError(f"apt knows {metapackage} but it depends on no linux-image-* package "
                            f"(apt-cache depends said: {depends_text.strip()[:200]!r})")
    return found[0]


def package_version(show_text: str, package: str) -> str:
    """The Version: field of `apt-cache show --no-all-versions <package>`."""
    m = re.search(r"^Version:\s*(\S+)\s*$", show_text, re.M)
    if not m:
        raise KernelVmError(f"apt-cache show {package}: no Version field")
    return m.group(1)


def unpack(deb: Path, dest: Path, package: str, version: str) -> Kernel:
    """dpkg-deb -x into dest (atomically: a temporary sibling renamed into place), then depmod."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is read by whoever boots the kernel
    try:
        run_tool(["dpkg-deb", "-x", str(deb), str(tmp)])
        images = sorted((tmp / "boot").glob("vmlinuz-*"))
        if not images:
            raise KernelVmError(f"{deb.name}: no boot/vmlinuz-* in the package")
        release = images[-1].name.removeprefix("vmlinuz-")
        # bookworm ships /lib/modules, trixie and later /usr/lib/modules (merged /usr)
        moddirs = [d for d in (tmp / "lib/modules" / release, tmp / "usr/lib/modules" / release) if d.is_dir()]
        if not moddirs:
            raise KernelVmError(f"{deb.name}: no lib/modules/{release} in the package")
        moddir = moddirs[0]
        run_tool(["depmod", "-b", str(moddir.parents[2]), release])  # <base>/lib/modules/<release>
        meta = {"distro": "debian", "package": package, "version": version, "release": release,
                "image": str(images[-1].relative_to(tmp)), "moddir": str(moddir.relative_to(tmp)),
                "fetched": datetime.datetime.now().isoformat(timespec="seconds")}
        (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kernel = fetched(dest)
    assert kernel is not None, dest
    return kernel


IMAGE_PACKAGE = re.compile(r"linux-image-[0-9][A-Za-z0-9.+~-]*")  # linux-image-<release>, as Debian names them


def image_package_problem(show_text: str, package: str) -> None:
    """Refuse (KernelVmError) what `apt-cache show <package>` says is no bootable kernel image, before
    anything is downloaded: another package than the one named (apt reads a name with '.' or '+' it
    does not know as a pattern), debug symbols (Section debug: a gigabyte with no vmlinuz), a
    signing template."""
    found = re.search(r"^Package:\s*(\S+)\s*$", show_text, re.M)
    section = re.search(r"^Section:\s*(\S+)\s*$", show_text, re.M)
    if found is None or found.group(1) != package:
        raise KernelVmError(f"--package: apt has no package named exactly {package!r} "
                            f"(apt-cache show gave {found.group(1) if found else 'nothing'!r})")
    if (section and section.group(1).endswith("debug")) or package.endswith(("-dbg", "-template")):
        raise KernelVmError(f"--package: {package} is no kernel image (debug symbols or a signing template)")


def fetch_debian(cache: Path | None = None, arch: str = "amd64", update: bool = True, log=print,
                 package: str | None = None) -> Kernel:
    """Fetch (or find already fetched) Debian's current kernel, or the one `package` names: a
    metapackage (linux-image-6.12-amd64: the image it depends on) or an image package itself
    (linux-image-6.12.100+deb12-amd64); records it as `--kernel debian`."""
    cache = cache or cache_dir()
    if package is not None and not re.fullmatch(r"linux-image-[A-Za-z0-9.+~-]+", package):
        raise KernelVmError(f"--package {package!r}: expected a Debian linux-image-* package name "
                            "(linux-image-6.12-amd64, linux-image-6.12.100+deb12-amd64)")
    metapackage = package or METAPACKAGE.get(arch)
    if metapackage is None:
        raise KernelVmError(f"kvmtest kernel fetch debian: no Debian kernel metapackage known for {arch}")
    if update:
        if os.geteuid() == 0:
            log("kvmtest kernel fetch: apt-get update")
            run_tool(["apt-get", "update", "-qq"])
        else:
            log("kvmtest kernel fetch: not root, using apt's package lists as they are (no apt-get update)")
    if package is not None:  # exactly that package, and a kernel: before apt reads the name as a pattern
        image_package_problem(run_tool(["apt-cache", "show", "--no-all-versions", package]), package)
    try:
        depends = run_tool(["apt-cache", "depends", metapackage])
    except KernelVmError as e:
        raise KernelVmError(f"apt cannot find {metapackage} (is this Debian, with main in sources.list?): "
                            f"{e}") from None
    try:
        package = image_package(depends, metapackage)
    except KernelVmError:
        if metapackage == METAPACKAGE.get(arch) or not IMAGE_PACKAGE.fullmatch(metapackage):
            raise
        package = metapackage  # an image package itself: it depends on no other image
    show = run_tool(["apt-cache", "show", "--no-all-versions", package])
    if package != metapackage or metapackage != METAPACKAGE.get(arch):
        image_package_problem(show, package)
    version = package_version(show, package)
    release = package.removeprefix("linux-image-")
    dest = cache / release
    have = fetched(dest)
    if have is not None and have.source == f"debian {package} {version}":
        log(f"kvmtest kernel fetch: {package} {version} already in {dest}")
    else:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="kvmtest-deb-", dir=cache) as tmp:
            log(f"kvmtest kernel fetch: apt-get download {package} ({version})")
            run_tool(["apt-get", "download", f"{package}={version}"], cwd=tmp)
            debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
            if not debs:
                raise KernelVmError(f"apt-get download {package} left no {package}_*.deb behind")
            have = unpack(debs[0], dest, package, version)
        log(f"kvmtest kernel fetch: unpacked {have.image} and {have.moddir}")
    (cache / CURRENT.format(distro="debian")).write_text(
        json.dumps({"release": have.release, "package": package, "version": version}, indent=2) + "\n")
    return have
