"""The normalised syscall event and the per-process batch the collector emits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

#: Event types that close a process session.
EXIT_TYPES = frozenset({"exit"})
#: Event types that replace the process image (start a new session on success).
EXEC_TYPES = frozenset({"execve"})
#: Not a syscall: a reading of a thread's CPU time that a collector took from
#: ``/proc`` (``producers.cputime``). ``res`` is the thread's cumulative
#: user+system CPU time in nanoseconds, ``tid`` the thread, ``arg`` empty. The
#: sessionizer keeps these apart from the syscalls (they are never counted as
#: one), so sources that send none describe a process exactly as before.
CPU_EVENT = "cpu_time"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What the collector saw of a process; every string came from a hostile source."""

    host: str
    container_id: str
    pid: int
    ppid: int
    comm: str
    exe: str
    cmdline: str
    container_image: str = ""

    @property
    def key(self) -> str:
        """Kafka key: one process (including PID reuse) stays on one partition."""
        return f"{self.host}/{self.container_id}/{self.pid}"


class Syscall(NamedTuple):
    """One system call, normalised so strace and sysdig agree.

    A ``NamedTuple`` rather than a frozen dataclass: the worker builds one per
    event, and ``tuple.__new__`` is about twice as fast as a frozen dataclass's
    five ``object.__setattr__`` calls. It is as immutable, and the sessionizer
    unpacks it in field order. (It compares equal to a plain tuple of the same
    values; nothing relies on that either way.)

    Attributes:
        ts_ns: wall-clock time of the call, nanoseconds since the epoch.
        tid: thread that made it.
        name: canonical syscall name (see ``core.syscalls``).
        res: return value; negative means failure; 0 when unknown.
        arg: the file path or socket address the call touched, or "".
    """

    ts_ns: int
    tid: int
    name: str
    res: int = 0
    arg: str = ""


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Consecutive syscalls of one process image, as published to Kafka."""

    process: ProcessInfo
    events: tuple[Syscall, ...] = field(default_factory=tuple)
    source: str = "sysdig"

    def __len__(self) -> int:
        return len(self.events)

    def syscall_count(self) -> int:
        """Events that are syscalls (``CPU_EVENT`` readings left out)."""
        return len(self.events) - [e[2] for e in self.events].count(CPU_EVENT)
