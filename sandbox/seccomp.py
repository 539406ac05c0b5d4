"""A seccomp filter for bubblewrap's ``--seccomp FD``: system calls that reach past every namespace fail.

Namespaces do not cover the kernel keyrings (a sandbox would share the caller's session keyring: read its
keys, plant some for the next program, wipe them), nor ``ptrace``, ``perf_event_open``, ``bpf``,
``userfaultfd`` and ``io_uring``, which container runtimes (Docker's default profile, Flatpak) refuse
for the same reason. The filter is a classic BPF program in the form libseccomp exports and bubblewrap
loads: check the architecture, then return ``EPERM`` for each listed call and allow the rest. An unknown
architecture or the x32 ABI gets ``EPERM`` for everything rather than an unchecked pass.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# (audit architecture, {name: number}); numbers from the kernel's syscall tables.
_ARCHES = {
    "x86_64": (
        0xC000003E,
        {
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "ptrace": 101,
            "perf_event_open": 298,
            "bpf": 321,
            "userfaultfd": 323,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "kexec_load": 246,
            "kexec_file_load": 320,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "ptrace": 117,
            "perf_event_open": 241,
            "bpf": 280,
            "userfaultfd": 282,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "kexec_load": 104,
            "kexec_file_load": 294,
        },
    ),
}
DENIED = tuple(_ARCHES["x86_64"][1])

_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_X32_BIT = 0x40000000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def filter_program(machine: str | None = None) -> bytes:
    """The BPF program (``struct sock_filter[]``) for this machine's architecture."""
    arch, table = _ARCHES.get(machine or platform.machine(), (None, {}))
    deny = _RET_ERRNO | errno.EPERM
    if arch is None:
        return _insn(_RET_K, 0, 0, deny)
    numbers = sorted(table.values())
    prog = [
        _insn(_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_JEQ_K, 1, 0, arch),
        _insn(_RET_K, 0, 0, deny),
        _insn(_LD_W_ABS, 0, 0, 0),
    ]  # seccomp_data.nr
    if arch == _ARCHES["x86_64"][0]:
        prog += [_insn(_JGE_K, 0, 1, _X32_BIT), _insn(_RET_K, 0, 0, deny)]
    for i, nr in enumerate(numbers):
        to_deny = len(numbers) - i  # jump over the remaining compares and the allow
        prog.append(_insn(_JEQ_K, to_deny, 0, nr))
    prog += [_insn(_RET_K, 0, 0, _RET_ALLOW), _insn(_RET_K, 0, 0, deny)]
    return b"".join(prog)


def filter_fd() -> int:
    """A fresh memfd holding the program, positioned at its start (bubblewrap reads it to the end)."""
    fd = os.memfd_create("autonas-seccomp", 0)
    os.write(fd, filter_program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
