"""Run a command under the rule of systemd's ``MemoryDenyWriteExecute=yes``, without systemd.

``python tests/deploy/wx_guard.py COMMAND ARGS...`` installs a seccomp filter, then execs the
command (the filter survives ``execve`` and applies to every thread and child). The filter is the
one systemd installs for that setting (``seccomp_memory_deny_write_execute()`` in systemd's
``src/shared/seccomp-util.c``), on any kernel with seccomp:

* ``mmap`` with ``PROT_WRITE`` and ``PROT_EXEC`` both set fails with EPERM;
* ``mprotect`` and ``pkey_mprotect`` adding ``PROT_EXEC`` fail with EPERM;
* ``shmat`` with ``SHM_EXEC`` fails with EPERM.

So a process that runs here runs under the unit's ``MemoryDenyWriteExecute=yes``: a library that
needs writable executable memory (a JIT, text relocations, an executable stack, libffi closures)
fails here as it would under systemd. Before it execs, the guard checks that the filter is in
force (an anonymous mapping both writable and executable must be refused), and exits 3 if not.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
PROT_WRITE = 0x2
PROT_EXEC = 0x4
SHM_EXEC = 0o100000

# AUDIT_ARCH_* and the syscall numbers of the four calls, per machine.
ARCHES = {
    "x86_64": (0xC000003E, {"mmap": 9, "mprotect": 10, "shmat": 30, "pkey_mprotect": 329}),
    "aarch64": (0xC00000B7, {"mmap": 222, "mprotect": 226, "shmat": 196, "pkey_mprotect": 288}),
}

# classic BPF opcodes
LD_W_ABS = 0x20
JEQ_K = 0x15
AND_K = 0x54
RET_K = 0x06

# struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6] (little-endian: the low half first)
NR, ARCH, ARG2 = 0, 4, 16 + 2 * 8


class SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    )


class SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter)))


Insn = tuple[int, "int | str", "int | str", int]


def program(machine: str) -> list[str | Insn]:
    """The filter: instructions, and labels (strings) naming the instruction that follows."""
    if machine not in ARCHES:
        raise SystemExit(f"wx_guard: no syscall table for {machine}; add it to ARCHES")
    audit_arch, nr = ARCHES[machine]
    return [
        (LD_W_ABS, 0, 0, ARCH),
        (JEQ_K, 0, "allow", audit_arch),  # another ABI: not ours to judge
        (LD_W_ABS, 0, 0, NR),
        (JEQ_K, "mmap", 0, nr["mmap"]),
        (JEQ_K, "mprotect", 0, nr["mprotect"]),
        (JEQ_K, "mprotect", 0, nr["pkey_mprotect"]),
        (JEQ_K, "shmat", 0, nr["shmat"]),
        (RET_K, 0, 0, SECCOMP_RET_ALLOW),
        "mmap",
        (LD_W_ABS, 0, 0, ARG2),
        (AND_K, 0, 0, PROT_WRITE | PROT_EXEC),
        (JEQ_K, "deny", "allow", PROT_WRITE | PROT_EXEC),
        "mprotect",
        (LD_W_ABS, 0, 0, ARG2),
        (AND_K, 0, 0, PROT_EXEC),
        (JEQ_K, "deny", "allow", PROT_EXEC),
        "shmat",
        (LD_W_ABS, 0, 0, ARG2),
        (AND_K, 0, 0, SHM_EXEC),
        (JEQ_K, "deny", "allow", SHM_EXEC),
        "deny",
        (RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
        "allow",
        (RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]


def assemble(source: list[str | Insn]) -> list[tuple[int, int, int, int]]:
    """Labels resolved to BPF's relative jumps (to the instruction after this one + offset)."""
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for item in source:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)

    def offset(pc: int, target: int | str) -> int:
        return labels[target] - pc - 1 if isinstance(target, str) else target

    return [(code, offset(pc, jt), offset(pc, jf), k) for pc, (code, jt, jf, k) in enumerate(insns)]


def install() -> None:
    insns = assemble(program(platform.machine()))
    filters = (SockFilter * len(insns))(*(SockFilter(*i) for i in insns))
    prog = SockFprog(len(insns), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def in_force() -> bool:
    """Whether a writable and executable mapping is refused now."""
    try:
        mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | PROT_WRITE | PROT_EXEC).close()
    except PermissionError:
        return True
    return False


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: wx_guard.py COMMAND [ARGS...]")
    install()
    if not in_force():
        print("wx_guard: the filter is not in force", file=sys.stderr)
        raise SystemExit(3)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
