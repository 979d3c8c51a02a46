"""kvmtest.userfaultfd against the system's <linux/userfaultfd.h>: structure sizes, the offsets
read from struct uffd_msg, the ioctl numbers and constants (a small C program, compiled with the
system compiler). No /dev/kvm or userfaultfd permission is needed."""

import ctypes
import shutil
import subprocess

import pytest

from kvmtest import userfaultfd as U

C_SOURCE = r"""
#include <stddef.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>
int main(void) {
    printf("sizeof(uffdio_api) %zu\n", sizeof(struct uffdio_api));
    printf("sizeof(uffdio_register) %zu\n", sizeof(struct uffdio_register));
    printf("sizeof(uffdio_copy) %zu\n", sizeof(struct uffdio_copy));
    printf("sizeof(uffd_msg) %zu\n", sizeof(struct uffd_msg));
    printf("uffd_msg.flags %zu\n", offsetof(struct uffd_msg, arg.pagefault.flags));
    printf("uffd_msg.address %zu\n", offsetof(struct uffd_msg, arg.pagefault.address));
    printf("uffd_msg.ptid %zu\n", offsetof(struct uffd_msg, arg.pagefault.feat.ptid));
    printf("uffdio_copy.copy %zu\n", offsetof(struct uffdio_copy, copy));
    printf("sizeof(uffdio_continue) %zu\n", sizeof(struct uffdio_continue));
    printf("uffdio_continue.mapped %zu\n", offsetof(struct uffdio_continue, mapped));
    printf("UFFDIO_CONTINUE %lu\n", (unsigned long)UFFDIO_CONTINUE);
    printf("UFFDIO_REGISTER_MODE_MINOR %lu\n", (unsigned long)UFFDIO_REGISTER_MODE_MINOR);
    printf("UFFD_FEATURE_MINOR_SHMEM %lu\n", (unsigned long)UFFD_FEATURE_MINOR_SHMEM);
    printf("UFFD_PAGEFAULT_FLAG_MINOR %lu\n", (unsigned long)UFFD_PAGEFAULT_FLAG_MINOR);
    printf("UFFDIO_API %lu\n", (unsigned long)UFFDIO_API);
    printf("UFFDIO_REGISTER %lu\n", (unsigned long)UFFDIO_REGISTER);
    printf("UFFDIO_COPY %lu\n", (unsigned long)UFFDIO_COPY);
    printf("UFFD_API %lu\n", (unsigned long)UFFD_API);
    printf("UFFDIO_REGISTER_MODE_MISSING %lu\n", (unsigned long)UFFDIO_REGISTER_MODE_MISSING);
    printf("UFFD_EVENT_PAGEFAULT %lu\n", (unsigned long)UFFD_EVENT_PAGEFAULT);
    printf("UFFD_PAGEFAULT_FLAG_WRITE %lu\n", (unsigned long)UFFD_PAGEFAULT_FLAG_WRITE);
    printf("SYS_userfaultfd %lu\n", (unsigned long)SYS_userfaultfd);
    return 0;
}
"""

OURS = {
    "sizeof(uffdio_api)": ctypes.sizeof(U.uffdio_api),
    "sizeof(uffdio_register)": ctypes.sizeof(U.uffdio_register),
    "sizeof(uffdio_copy)": ctypes.sizeof(U.uffdio_copy),
    "sizeof(uffd_msg)": ctypes.sizeof(U.uffd_msg),
    "uffd_msg.flags": U.uffd_msg.flags.offset,
    "uffd_msg.address": U.uffd_msg.address.offset,
    "uffd_msg.ptid": U.uffd_msg.ptid.offset,
    "uffdio_copy.copy": U.uffdio_copy.copy.offset,
    "sizeof(uffdio_continue)": ctypes.sizeof(U.uffdio_continue),
    "uffdio_continue.mapped": U.uffdio_continue.mapped.offset,
    "UFFDIO_CONTINUE": U.UFFDIO_CONTINUE,
    "UFFDIO_REGISTER_MODE_MINOR": U.UFFDIO_REGISTER_MODE_MINOR,
    "UFFD_FEATURE_MINOR_SHMEM": U.UFFD_FEATURE_MINOR_SHMEM,
    "UFFD_PAGEFAULT_FLAG_MINOR": U.UFFD_PAGEFAULT_FLAG_MINOR,
    "UFFDIO_API": U.UFFDIO_API,
    "UFFDIO_REGISTER": U.UFFDIO_REGISTER,
    "UFFDIO_COPY": U.UFFDIO_COPY,
    "UFFD_API": U.UFFD_API,
    "UFFDIO_REGISTER_MODE_MISSING": U.UFFDIO_REGISTER_MODE_MISSING,
    "UFFD_EVENT_PAGEFAULT": U.UFFD_EVENT_PAGEFAULT,
    "UFFD_PAGEFAULT_FLAG_WRITE": U.UFFD_PAGEFAULT_FLAG_WRITE,
    "SYS_userfaultfd": U.SYS_userfaultfd,
}


def test_userfaultfd_layout_matches_the_system_header(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to read <linux/userfaultfd.h> with")
    src, exe = tmp_path / "uffd.c", tmp_path / "uffd"
    src.write_text(C_SOURCE)
    built = subprocess.run([cc, str(src), "-o", str(exe)], capture_output=True, text=True)
    if built.returncode and "userfaultfd.h" in built.stderr:
        pytest.skip(f"no usable <linux/userfaultfd.h>: {built.stderr.strip()[:200]}")
    assert built.returncode == 0, built.stderr
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    theirs = {name: int(value) for name, value in (line.rsplit(" ", 1) for line in lines)}
    wrong = {k: (OURS[k], theirs[k]) for k in OURS if OURS[k] != theirs[k]}
    assert theirs.keys() == OURS.keys() and not wrong, f"kvmtest vs <linux/userfaultfd.h>: {wrong}"
