"""Canonical syscall names and path classes shared by every source.

strace prints the kernel's names (``newfstatat``, ``pread64``, ``clone3``), sysdig
its own event names (``fstat``, ``pread``, ``procexit``). Both are folded onto one
vocabulary so a model trained on strace recordings reads sysdig captures too.
"""

from __future__ import annotations

import re

#: Folds a source-specific name onto its canonical family.
ALIASES: dict[str, str] = {
    "openat": "open", "openat2": "open", "creat": "open", "open_by_handle_at": "open",
    "newfstatat": "stat", "fstatat": "stat", "fstat": "stat", "lstat": "stat",
    "statx": "stat", "stat64": "stat", "fstat64": "stat", "lstat64": "stat",
    "fstatat64": "stat",
    "pread64": "pread", "pwrite64": "pwrite", "preadv": "readv", "preadv2": "readv",
    "pwritev": "writev", "pwritev2": "writev",
    "clone3": "clone", "fork": "clone", "vfork": "clone",
    "exit_group": "exit", "procexit": "exit",
    "execveat": "execve",
    "rt_sigaction": "sigaction", "rt_sigprocmask": "sigprocmask",
    "rt_sigreturn": "sigreturn", "rt_sigsuspend": "sigsuspend",
    "rt_sigtimedwait": "sigtimedwait",
    "mmap2": "mmap", "getdents64": "getdents",
    "dup2": "dup", "dup3": "dup", "accept4": "accept",
    "wait4": "wait", "waitid": "wait",
    "epoll_pwait": "epoll_wait", "epoll_pwait2": "epoll_wait",
    "ppoll": "poll", "pselect6": "select", "_newselect": "select",
    "sendmsg": "send", "sendmmsg": "send", "sendto": "send",
    "recvmsg": "recv", "recvmmsg": "recv", "recvfrom": "recv",
    "epoll_create1": "epoll_create", "pipe2": "pipe", "eventfd2": "eventfd",
    "inotify_init1": "inotify_init", "signalfd4": "signalfd",
    "renameat": "rename", "renameat2": "rename", "unlinkat": "unlink",
    "mkdirat": "mkdir", "symlinkat": "symlink", "linkat": "link",
    "fchmodat": "chmod", "fchmod": "chmod", "fchownat": "chown", "fchown": "chown",
    "lchown": "chown", "faccessat": "access", "faccessat2": "access",
    "readlinkat": "readlink", "clock_nanosleep": "nanosleep",
    "prlimit64": "prlimit", "getrlimit": "prlimit", "setrlimit": "prlimit",
    "ugetrlimit": "prlimit", "fcntl64": "fcntl", "fadvise64": "fadvise",
    "futex_waitv": "futex", "getuid32": "getuid", "geteuid32": "geteuid",
    "getgid32": "getgid", "getegid32": "getegid", "umount2": "umount",
    "truncate64": "truncate", "ftruncate64": "ftruncate", "ftruncate": "truncate",
    "sync_file_range": "fsync", "fdatasync": "fsync",
    "utimensat": "utime", "utimes": "utime", "futimesat": "utime",
    "llseek": "lseek", "_llseek": "lseek",
}

#: The model's syscall vocabulary; anything else counts as "other".
VOCABULARY: tuple[str, ...] = (
    "read", "write", "open", "close", "stat", "lseek", "mmap", "mprotect", "munmap",
    "brk", "sigaction", "sigprocmask", "sigreturn", "ioctl", "pread", "pwrite",
    "readv", "writev", "access", "pipe", "select", "poll", "epoll_wait",
    "epoll_ctl", "epoll_create", "sched_yield", "mremap", "madvise", "dup",
    "nanosleep", "getpid", "socket", "connect", "accept", "send", "recv",
    "shutdown", "bind", "listen", "getsockname", "getpeername", "socketpair",
    "setsockopt", "getsockopt", "clone", "execve", "exit", "wait", "kill",
    "uname", "fcntl", "flock", "fsync", "truncate", "getdents", "getcwd",
    "chdir", "rename", "mkdir", "rmdir", "unlink", "symlink", "link",
    "readlink", "chmod", "chown", "umask", "gettimeofday", "prlimit",
    "getrusage", "sysinfo", "getuid", "getgid", "geteuid", "getegid",
    "setuid", "setgid", "getppid", "getpgrp", "setsid", "setpgid", "getpgid",
    "sigaltstack", "statfs", "prctl", "arch_prctl", "futex",
    "sched_setaffinity", "sched_getaffinity", "set_tid_address",
    "set_robust_list", "clock_gettime", "clock_getres", "nanosleep",
    "getrandom", "memfd_create", "eventfd", "inotify_init", "inotify_add_watch",
    "signalfd", "timerfd_create", "timerfd_settime", "tgkill", "rseq",
    "setpriority", "getpriority", "sched_setscheduler", "sched_getscheduler",
    "mlock", "munlock", "mincore", "sendfile", "splice", "copy_file_range",
    "fadvise", "utime", "ptrace", "mount", "umount", "capget", "capset",
    "seccomp", "bpf", "perf_event_open", "unshare", "setns", "sigsuspend",
    "sigtimedwait", "tkill", "chroot", "pivot_root", "personality", "sysfs",
    "ioprio_set", "ioprio_get", "migrate_pages", "mbind", "get_mempolicy",
    "set_mempolicy", "other",
)
VOCABULARY = tuple(dict.fromkeys(VOCABULARY))  # keep order, drop repeats
VOCAB_INDEX: dict[str, int] = {name: i for i, name in enumerate(VOCABULARY)}

#: Events a source reports that are not system calls of the process.
NON_SYSCALL_EVENTS = frozenset({
    "switch", "procinfo", "container", "drop", "notification", "infra",
    "page_fault", "signaldeliver", "cpu_hotplug", "sysdigevent", "k8s", "mesos",
    "tracer", "meta", "pluginevent", "asyncevent",
})

#: Canonical syscalls whose path or address argument feeds the path classes. Only
#: these count, whatever a source attaches to other calls (sysdig names the file of
#: every read; strace does not), so both sources describe the same thing.
PATH_SYSCALLS = frozenset({
    "open", "stat", "access", "execve", "readlink", "unlink", "mkdir", "rmdir",
    "chdir", "rename", "symlink", "link", "chmod", "chown", "truncate", "statfs",
    "utime", "mount", "chroot", "connect", "bind", "send",
})

_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def canonical(name: str) -> str:
    """Return the canonical family of a syscall name from any source.

    Raises:
        ValueError: the name is not shaped like a syscall name.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"not a syscall name: {name[:60]!r}")
    return ALIASES.get(name, name)


def vocab_slot(name: str) -> int:
    """Index of a canonical name in the vocabulary, "other" when unknown."""
    return VOCAB_INDEX.get(name, VOCAB_INDEX["other"])


#: Path classes, checked in order; the first prefix that matches wins.
PATH_CLASSES: tuple[tuple[str, str], ...] = (
    ("/proc/self", "proc_self"),
    ("/proc/sys", "proc_sys"),
    ("/proc/", "proc"),
    ("/sys/devices/system/cpu", "sys_cpu"),
    ("/sys/devices/system/node", "sys_numa"),
    ("/sys/kernel/mm", "sys_mm"),
    ("/sys/fs/cgroup", "sys_cgroup"),
    ("/sys/", "sys"),
    ("/dev/null", "dev_null"),
    ("/dev/pts", "dev_tty"),
    ("/dev/tty", "dev_tty"),
    ("/dev/urandom", "dev_random"),
    ("/dev/random", "dev_random"),
    ("/dev/", "dev"),
    ("/etc/ld.so", "ld_cache"),
    ("/etc/passwd", "etc_auth"),
    ("/etc/shadow", "etc_auth"),
    ("/etc/group", "etc_auth"),
    ("/etc/nsswitch.conf", "etc_nss"),
    ("/etc/hosts", "etc_net"),
    ("/etc/resolv.conf", "etc_net"),
    ("/etc/ssl", "etc_ssl"),
    ("/usr/lib/ssl", "etc_ssl"),
    ("/etc/localtime", "etc_time"),
    ("/usr/share/zoneinfo", "etc_time"),
    ("/etc/cron", "persist"),
    ("/var/spool/cron", "persist"),
    ("/etc/systemd", "persist"),
    ("/etc/init.d", "persist"),
    ("/etc/", "etc"),
    ("/usr/lib/locale", "locale"),
    ("/usr/share/locale", "locale"),
    ("/lib", "lib"),
    ("/usr/lib", "lib"),
    ("/usr/local/lib", "lib"),
    ("/usr/share", "share"),
    ("/usr/bin", "bin"),
    ("/usr/sbin", "bin"),
    ("/bin", "bin"),
    ("/sbin", "bin"),
    ("/usr/local/bin", "bin"),
    ("/tmp", "tmp"),
    ("/var/tmp", "tmp"),
    ("/dev/shm", "tmp"),
    ("/var/log", "var_log"),
    ("/var/", "var"),
    ("/home", "home"),
    ("/root", "home"),
    ("/run", "run"),
    ("/opt", "opt"),
    ("/", "other_abs"),
)
PATH_CLASS_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys([c for _, c in PATH_CLASSES] + ["rel", "socket_inet", "socket_unix",
                                                  "pipe", "anon", "none"])
)
PATH_CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(PATH_CLASS_NAMES)}

_INET_RE = re.compile(r"^[0-9a-fA-F.:\[\]]+:\d+(->|$)")


#: Bound of the ``classify_path`` memo; hostile paths cannot grow it further.
PATH_MEMO_MAX = 65_536
_PATH_MEMO: dict[str, str] = {}


def classify_path(arg: str) -> str:
    """Name the class of a path or socket address, never the path itself.

    Memoised per exact argument: most paths a process touches (libraries,
    ``/proc``, ``/etc``) come back again and again, and the prefix scan walks up
    to 52 prefixes. The memo is emptied when it reaches ``PATH_MEMO_MAX``.
    """
    cls = _PATH_MEMO.get(arg)
    if cls is None:
        cls = _classify_path(arg)
        if len(_PATH_MEMO) >= PATH_MEMO_MAX:
            _PATH_MEMO.clear()
        _PATH_MEMO[arg] = cls
    return cls


def _classify_path(arg: str) -> str:
    if not arg:
        return "none"
    if arg.startswith("/"):
        for prefix, cls in PATH_CLASSES:
            if arg.startswith(prefix):
                return cls
    if "->" in arg or _INET_RE.match(arg):
        return "socket_inet"
    if arg.startswith(("pipe:", "<pipe")) or arg == "pipe":
        return "pipe"
    if arg.startswith(("anon_inode", "<anon", "[")):
        return "anon"
    if arg.startswith(("unix", "@", "<unix")):
        return "socket_unix"
    return "rel"
