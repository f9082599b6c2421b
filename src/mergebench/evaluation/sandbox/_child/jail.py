"""Enter the kernel's isolation: user, PID, mount, network, IPC, UTS and cgroup namespaces, a fresh root.

Why the kernel and not Python: a blocklist inside the interpreter can always be walked around
(``posix``, ``ctypes``, ``importlib.reload``). Namespaces change what exists for the process.

The calling process P forks C. C unshares the namespaces; P, still outside, writes C's uid/gid
map (one unprivileged id: inside uid 1000 is outside 65534 when the harness runs as root, the
harness's own uid otherwise; setgroups denied) because only a process in the parent namespace
may map an id other than its own. C then builds a root from a size-capped tmpfs holding
read-only binds of the interpreter, its standard library and shared-library directories, five
device nodes and a writable ``/work`` tmpfs, pivots into it and detaches the old root. Host
``/proc``, ``/sys``, ``/etc``, home and cache directories are not in it.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

INSIDE_UID = INSIDE_GID = 1000
NOBODY = 65534
DEVICES = ("null", "zero", "full", "random", "urandom")

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 4096, 16384, 1 << 18, 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 4, 24, 38, 47
SYSCALLS = {"x86_64": {"pivot_root": 155, "keyctl": 250}, "aarch64": {"pivot_root": 41, "keyctl": 219}}

libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """The sandbox could not be built; the message names the step and the kernel's answer."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what} failed: {os.strerror(err)} (errno {err})")


def _syscall(name: str, *args) -> int:
    number = SYSCALLS.get(os.uname().machine, {}).get(name)
    if number is None:
        raise SetupError(f"no {name} syscall number known for {os.uname().machine}")
    return libc.syscall(number, *args)


def read_only_views() -> list[str]:
    """Paths the interpreter needs: itself, its import path, and the directories of loaded libraries."""
    paths = {os.path.realpath(sys.executable)}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    with open("/proc/self/maps") as maps:
        for line in maps:
            name = line.split(None, 5)[-1].strip()
            if name.startswith("/") and ".so" in os.path.basename(name) and os.path.exists(name):
                paths.add(os.path.dirname(name))
    keep = []  # a directory inside another one is visible through its parent's bind
    for path in sorted(paths):
        if not any(path.startswith(parent.rstrip("/") + "/") for parent in keep):
            keep.append(path)
    return keep


def enter(work_bytes: int, on_fork=None, root_bytes: int = 1 << 20) -> None:
    """Fork; the parent maps ids, waits and exits with the child's status; the child returns jailed.

    ``on_fork(pid)`` runs in the parent right after the fork (to route termination requests).
    """
    if os.geteuid() == 0:
        try:
            os.setgroups([])  # supplementary groups cannot be dropped once setgroups is denied
        except PermissionError:
            pass  # already in a user namespace that denies setgroups: there is nothing to drop
    if os.uname().machine in SYSCALLS:  # KEYCTL_JOIN_SESSION_KEYRING: leave the harness's session keyring
        _syscall("keyctl", 1, None)  # (best effort: seccomp profiles may refuse it, and then keys are refused too)
    views = read_only_views()
    unshared_r, unshared_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    child = os.fork()
    if child:
        if on_fork is not None:
            on_fork(child)
        os.close(unshared_w)
        os.close(mapped_r)
        try:
            if os.read(unshared_r, 1) == b"1":
                _write_id_maps(child)
                os.write(mapped_w, b"1")
        finally:
            os.close(mapped_w)
            code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        os._exit(code if 0 <= code < 256 else 1)
    os.close(unshared_r)
    os.close(mapped_w)
    _check(libc.unshare(NAMESPACES), "unshare(user, pid, mount, net, ipc, uts, cgroup namespaces)")
    os.write(unshared_w, b"1")
    os.close(unshared_w)
    if os.read(mapped_r, 1) != b"1":
        os._exit(1)  # the parent reported why
    os.close(mapped_r)
    _no_nested_user_namespaces()
    sources = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in views}  # while our own id still opens them
    devices = {name: os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC) for name in DEVICES}
    flags = {path: os.statvfs(path).f_flag for path in views}
    is_dir = {path: stat.S_ISDIR(os.fstat(fd).st_mode) for path, fd in sources.items()}
    os.setresgid(INSIDE_GID, INSIDE_GID, INSIDE_GID)
    os.setresuid(INSIDE_UID, INSIDE_UID, INSIDE_UID)
    _build_root(sources, devices, flags, is_dir, work_bytes, root_bytes)
    for fd in (*sources.values(), *devices.values()):
        os.close(fd)


def _write_id_maps(child: int) -> None:
    """Map one id. As root, map to nobody; where nobody is not ours to map (root of a user namespace), our own id."""
    _write(child, "setgroups", "deny")
    for name, own in (("uid_map", os.geteuid()), ("gid_map", os.getegid())):
        try:
            _write(child, name, f"{INSIDE_UID} {NOBODY if os.geteuid() == 0 else own} 1")
        except SetupError:
            if os.geteuid() != 0:
                raise
            _write(child, name, f"{INSIDE_UID} {own} 1")


def _write(child: int, name: str, text: str) -> None:
    try:
        with open(f"/proc/{child}/{name}", "w") as handle:
            handle.write(text)
    except OSError as exc:
        raise SetupError(f"writing /proc/<pid>/{name} ({text!r}) failed: {exc.strerror}") from None


def _no_nested_user_namespaces() -> None:
    """Set this namespace's own user.max_user_namespaces to 0 (the host's value is untouched).

    A nested user namespace would give the candidate capabilities over namespaces of its own,
    and with them kernel code (netfilter, mounting filesystems) an unprivileged user cannot reach.
    Best effort: where /proc/sys is read-only (containers) the rest of the sandbox still stands.
    """
    try:
        with open("/proc/sys/user/max_user_namespaces", "w") as handle:
            handle.write("0")
    except OSError:
        pass


def _staging(views: list[str]) -> str:
    for path in ("/tmp", "/mnt", "/var/tmp", "/media", "/srv"):
        if os.path.isdir(path) and not any((v + "/").startswith(path + "/") for v in views):
            return path
    raise SetupError("no directory to build the sandbox root on (tried /tmp, /mnt, /var/tmp, /media, /srv)")


def _mount(source, target, fstype, flags: int, data, what: str) -> None:
    args = [None if a is None else os.fsencode(a) for a in (source, target, fstype)]
    _check(libc.mount(*args, ctypes.c_ulong(flags), None if data is None else data.encode()), what)


def _build_root(sources: dict, devices: dict, flags: dict, is_dir: dict, work_bytes: int, root_bytes: int) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None, "making mounts private")
    root = _staging(list(sources))
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={root_bytes},nr_inodes=4096,mode=0755",
           "mounting the root tmpfs")
    for path, fd in sources.items():
        target = root + path
        if is_dir[path]:
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC, None, f"binding {path}")
        locked = flags[path] & (os.ST_NOEXEC | os.ST_NOSUID | os.ST_NODEV)  # flags a user namespace may not clear
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | locked, None,
               f"making {path} read-only")
    os.makedirs(root + "/dev")
    for name, fd in devices.items():
        os.close(os.open(f"{root}/dev/{name}", os.O_CREAT | os.O_WRONLY, 0o666))
        _mount(f"/proc/self/fd/{fd}", f"{root}/dev/{name}", None, MS_BIND, None, f"binding /dev/{name}")
    os.mkdir(root + "/work", 0o700)
    _mount("tmpfs", root + "/work", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={work_bytes},nr_inodes=1024,mode=0700,uid={INSIDE_UID},gid={INSIDE_GID}", "mounting /work")
    os.symlink("/work", root + "/tmp")
    for name in os.listdir("/"):  # /lib -> usr/lib and friends, so library paths resolve as on the host
        if os.path.islink("/" + name) and not os.path.lexists(root + "/" + name):
            os.symlink(os.readlink("/" + name), root + "/" + name)
    os.chdir(root)
    _check(_syscall("pivot_root", b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detaching the host root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None, "making / read-only")
    os.chdir("/work")


def drop_privileges() -> None:
    """No capabilities (in any set), no regaining them, and not dumpable, so no ptrace or /proc access."""
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL past the last capability the kernel knows (EPERM without CAP_SETPCAP: none to drop)
    libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    _check(libc.capset(header, (ctypes.c_uint32 * 6)()), "capset (dropping capabilities)")
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(SET_DUMPABLE)")


def die_with_parent() -> None:
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # SIGKILL
