"""Hostile input: generated records for the parsers, decoders and redaction (#4).

Every generated input must come back as a result or as an ``InputError`` subclass
with a reason; any other exception is a crash. Runs are derandomized so CI sees
the same inputs every time. Inputs tried and crashes are counted per target and
printed by ``test_zz_fuzz_totals`` (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import string
from collections import Counter

import orjson
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from systerns.core.detector import Detector
from systerns.core.errors import InputError, SchemaError
from systerns.core.events import EventBatch, ProcessInfo, Syscall
from systerns.core.sessions import Judgement, Sessionizer, new_session
from systerns.producers.sysdig import FIELDS, ReadStats, parse_line, read_lines
from systerns.producers.trace import TraceStats, parse_trace
from systerns.schemas.codec import MAGIC, SUBJECTS, Codec, versions
from systerns.schemas.records import batch_to_record

TRIED: Counter[str] = Counter()
CRASHES: Counter[str] = Counter()
#: Examples per target; list targets count each generated line as an input.
EXAMPLES = {"single": 2500, "lists": 500, "secrets": 600}


def fuzz(kind: str) -> settings:
    """Derandomized settings with the example budget of one kind of target."""
    return settings(max_examples=EXAMPLES[kind], derandomize=True, deadline=None,
                    database=None, suppress_health_check=list(HealthCheck))


def _check_error(target: str, exc: BaseException) -> None:
    """Count a crash unless ``exc`` is an ``InputError`` with a reason."""
    if isinstance(exc, InputError) and exc.reason:
        return
    CRASHES[target] += 1
    raise AssertionError(f"{target}: {type(exc).__name__}: {exc}") from exc


# -- sysdig JSON lines --------------------------------------------------------

EVENT_TYPES = ["openat", "read", "write", "execve", "clone", "procexit", "switch",
               "connect", "no_such_call", "", "OPENAT", "open\x00at"]
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x20), max_size=20),
    st.sampled_from(["\u202e", "\x1b[31m", "\ud800", "\x00" * 8]),
    st.integers(1, 5).map(lambda n: "A" * (10 ** n)),
)
json_value = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
    st.floats(allow_nan=False), hostile_text, st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


OVERSIZED = b"B" * (1 << 20)


@st.composite
def sysdig_object(draw) -> dict:
    obj = {
        "evt.type": draw(st.one_of(st.sampled_from(EVENT_TYPES), json_value)),
        "evt.dir": draw(st.sampled_from(["<", ">", None, "x", 1])),
        "evt.rawtime": draw(st.one_of(st.integers(0, 2 ** 64), json_value)),
        "proc.pid": draw(st.one_of(st.sampled_from([1, 42, 42, 99]), json_value)),
        "thread.tid": draw(st.one_of(st.integers(-5, 2 ** 40), json_value)),
        "evt.rawres": draw(st.one_of(st.integers(-(2 ** 65), 2 ** 65), json_value)),
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=6)):
        obj[name] = draw(json_value)
    return obj


def _dumps(obj: dict) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # integers beyond 64 bits: the stdlib writes them
        return json.dumps(obj).encode("utf-8", "surrogatepass")


@st.composite
def sysdig_line(draw) -> bytes | str:
    raw = _dumps(draw(sysdig_object()))
    mutation = draw(st.sampled_from(
        ["none", "truncate", "invalid_utf8", "control", "garbage", "as_str", "array",
         "oversized"]))
    if mutation == "truncate":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif mutation == "invalid_utf8":
        at = draw(st.integers(0, len(raw)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
        raw = raw[:at] + bad + raw[at:]
    elif mutation == "control":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + bytes([draw(st.integers(0, 31))]) + raw[at:]
    elif mutation == "garbage":
        raw = draw(st.binary(max_size=200))
    elif mutation == "oversized":
        raw = raw[:-1] + b',"proc.cmdline":"' + OVERSIZED + b'"}'
    elif mutation == "array":
        raw = b"[" + raw + b"]"
    elif mutation == "as_str":
        return raw.decode("utf-8", "replace")
    return raw


@fuzz("single")
@given(sysdig_line())
def test_fuzz_sysdig_parse_line(line) -> None:
    TRIED["sysdig.parse_line"] += 1
    try:
        out = parse_line(line, "fuzz-host")
    except Exception as exc:  # noqa: BLE001 - the crash is what is counted
        _check_error("sysdig.parse_line", exc)
        return
    if out is not None:
        info, ev = out
        assert isinstance(info, ProcessInfo) and isinstance(ev, Syscall)
        assert isinstance(ev.ts_ns, int) and isinstance(info.pid, int)


@fuzz("lists")
@given(st.lists(sysdig_line(), max_size=12), st.randoms(use_true_random=False))
def test_fuzz_sysdig_read_lines(lines, rnd) -> None:
    """Reused PIDs, shuffled (out-of-order) timestamps, mixed good and bad lines."""
    TRIED["sysdig.read_lines"] += len(lines)
    rnd.shuffle(lines)
    stats = ReadStats()
    codec = Codec("event_batch")
    try:
        items = list(read_lines(lines, "fuzz-host", stats))
        for item in items:
            if isinstance(item, EventBatch):
                # What the collector then does with a batch: encode it.
                try:
                    codec.encode(batch_to_record(item))
                except SchemaError:
                    pass
                Sessionizer({}).ingest(item)
            else:
                assert isinstance(item, InputError) and item.reason
    except Exception as exc:  # noqa: BLE001 - the crash is what is counted
        _check_error("sysdig.read_lines", exc)
        return

    assert stats.bad == sum(isinstance(i, InputError) for i in items)
    assert stats.lines == len(lines)


# -- strace lines -------------------------------------------------------------

SYSCALLS = ["openat", "read", "execve", "clone", "clone3", "exit_group", "chdir",
            "fchdir", "connect", "fork", "vfork", "bogus_call", "write"]


@st.composite
def strace_line(draw) -> str:
    tid = draw(st.sampled_from(["100", "101", "100", "7", "0", "9" * 20]))
    ts = f"{draw(st.integers(0, 2 ** 40))}.{draw(st.integers(0, 10 ** 9)):06d}"
    name = draw(st.sampled_from(SYSCALLS))
    args = draw(st.one_of(
        st.just('"/etc/passwd", O_RDONLY'),
        st.just('"/bin/ls", ["ls", "-l", "--token=abc"], 0x7ff /* 3 vars */'),
        st.just("child_stack=NULL, flags=CLONE_VM|CLONE_THREAD"),
        st.just('{sa_family=AF_INET, sin_port=htons(99999), '
                'sin_addr=inet_addr("1.2.3.4")}'),
        st.just('{sa_family=AF_UNIX, sun_path="\\x41\\777\\"'),
        st.text(max_size=40),
    ))
    res = draw(st.sampled_from(["0", "-1 ENOENT (No such file)", "3", "0x7f00", "?",
                                "022", "-1 EWHAT", "08", "0x", "1" * 30, "-"]))
    kind = draw(st.sampled_from(["call", "unfinished", "resumed", "exit", "killed",
                                 "signal", "garbage", "huge"]))
    if kind == "call":
        return f"{tid} {ts} {name}({args}) = {res}\n"
    if kind == "unfinished":
        return f"{tid} {ts} {name}({args} <unfinished ...>\n"
    if kind == "resumed":
        return f"{tid} {ts} <... {name} resumed>{args}) = {res}\n"
    if kind == "exit":
        return f"{tid} {ts} +++ exited with {draw(st.integers(-3, 300))} +++\n"
    if kind == "killed":
        sig = draw(st.sampled_from(["SIGKILL", "SIGNOPE"]))
        return f"{tid} {ts} +++ killed by {sig} +++\n"
    if kind == "signal":
        return f"{tid} {ts} --- SIGCHLD {{si_signo=SIGCHLD}} ---\n"
    if kind == "huge":
        size = draw(st.sampled_from([10, 5000, 1 << 20]))
        return f"{tid} {ts} {name}(\"{'x' * size}\") = 0\n"
    return draw(st.text(max_size=80))


@fuzz("lists")
@given(st.lists(strace_line(), max_size=15))
def test_fuzz_strace_parse_trace(lines) -> None:
    TRIED["trace.parse_trace"] += len(lines)
    stats = TraceStats()
    try:
        items = list(parse_trace(lines, host="fuzz-host", stats=stats))
        for item in items:
            if isinstance(item, EventBatch):
                Sessionizer({}).ingest(item)
            else:
                assert isinstance(item, InputError) and item.reason
    except Exception as exc:  # noqa: BLE001 - the crash is what is counted
        _check_error("trace.parse_trace", exc)


# -- Avro decoders ------------------------------------------------------------

SAMPLES = {
    "event_batch": batch_to_record(EventBatch(
        ProcessInfo("h", "c", 1, 0, "sh", "/bin/sh", "sh -c x"),
        (Syscall(1, 1, "openat", 3, "/etc/passwd"),))),
    "dead_letter": {"stage": "collector", "reason": "not_json", "detail": "",
                    "source": "s", "raw": b"x", "ts_ms": 1},
}
FINGERPRINTS = [v.fingerprint for s in SUBJECTS for v in versions(s)]


@st.composite
def avro_message(draw) -> bytes:
    subject = draw(st.sampled_from(sorted(SAMPLES)))
    good = Codec(subject).encode(SAMPLES[subject])
    kind = draw(st.sampled_from(["flip", "truncate", "fingerprint", "random_fp",
                                 "no_magic", "garbage", "append"]))
    if kind == "flip":
        at = draw(st.integers(0, len(good) - 1))
        return good[:at] + bytes([good[at] ^ draw(st.integers(1, 255))]) + good[at + 1:]
    if kind == "truncate":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "fingerprint":
        return MAGIC + draw(st.sampled_from(FINGERPRINTS)) + good[10:]
    if kind == "random_fp":
        return MAGIC + draw(st.binary(min_size=8, max_size=8)) + good[10:]
    if kind == "no_magic":
        return good[2:]
    if kind == "append":
        return good + draw(st.binary(min_size=1, max_size=64))
    return MAGIC + draw(st.binary(max_size=300))


@fuzz("single")
@given(avro_message(), st.sampled_from(SUBJECTS))
def test_fuzz_codec_decode(data, subject) -> None:
    TRIED[f"codec.decode[{subject}]"] += 1
    try:
        out = Codec(subject).decode(data)
    except Exception as exc:  # noqa: BLE001 - the crash is what is counted
        _check_error(f"codec.decode[{subject}]", exc)
        return
    assert isinstance(out, dict)


# -- secrets in argv ----------------------------------------------------------

secret = st.text(alphabet=string.ascii_letters + string.digits, min_size=8,
                 max_size=24).map(lambda s: f"Zq9{s}")


@st.composite
def cmdline_with_secret(draw) -> tuple[str, str]:
    s = draw(secret)
    upper = "".join(c for c in s.upper() if c.isalnum())
    # A program-specific flag counts only at a command position (after ;).
    carrier = draw(st.sampled_from([
        f"--password={s}", f"--token {s}", f"; mysql -u root -p{s}", f"API_KEY={s}",
        f"DB_PASSWORD={s}", f"https://user:{s}@example.org/x",
        f"https://example.org/x?token={s}&a=1", f"Authorization: Bearer {s}",
        f"--client-secret={s}", f"--aws-access-key {s}",
        f"https://admin:a/{s}@db.example/x", f"'X-Api-Key: {s}'",
        f"--password '{s} and more words'", f"; curl -sSu admin:{s} https://x.example",
        f"; sshpass -p {s} ssh root@host", f"https://x.example/?X-Amz-Signature={s}",
    ]))
    if draw(st.booleans()):
        s, carrier = f"AKIA{(upper * 2)[:16]}", f"AKIA{(upper * 2)[:16]}"
    words = draw(st.lists(st.sampled_from(["curl", "-sS", "mysql", "x", "--", "\x1b[2J",
                                           "\u202e", "a" * 300]), max_size=6))
    at = draw(st.integers(0, len(words)))
    # A command line starts with the process name (sysdig's proc.cmdline).
    return " ".join(["kworker", *words[:at], carrier, *words[at:]]), s


class _Answer:
    behaves_like, confidence, model_version, top3 = "find", 0.99, 1, (("find", 0.99),)

    def __init__(self, malicious: float) -> None:
        self.malicious = malicious


class _Model:
    def __init__(self, malicious: float) -> None:
        self.malicious = malicious

    def predict(self, features):
        return [_Answer(self.malicious) for _ in range(len(features))]


@fuzz("secrets")
@given(cmdline_with_secret(), st.sampled_from([0.99, 0.1]))
def test_fuzz_secrets_never_reach_alerts_or_logs(pair, malicious) -> None:
    cmdline, token = pair
    TRIED["redact.build_alert"] += 1
    info = ProcessInfo("h", "c", 7, 1, "kworker", "/usr/bin/kworker", cmdline)
    session = new_session(info, "1", 1, "fuzz")
    session.update(n_events=500, counts={"execve": 1, "read": 499}, last_ts_ns=10 ** 10,
                   sample_paths=[f"/srv/x?token={token}"])
    with structlog.testing.capture_logs() as logs:
        judged = Detector(_Model(malicious)).judge([Judgement(session, "exit", True)])
        outcome = judged[0]
        structlog.get_logger("fuzz").warning(
            "alert", **{k: a[k] for a in outcome.alerts for k in ("cmdline",)})
    assert outcome.alerts, "the fake model always makes an alert"
    text = json.dumps([outcome.verdict, outcome.alerts, logs], default=str)
    if token in text:
        CRASHES["redact.build_alert"] += 1
    assert token not in text, cmdline


def test_zz_fuzz_totals() -> None:
    """Print inputs tried and crashes per target (runs after the fuzz tests)."""
    total = sum(TRIED.values())
    print(f"\nfuzz inputs tried={total} crashes={sum(CRASHES.values())}")
    for target in sorted(TRIED):
        print(f"  {target}: tried={TRIED[target]} crashes={CRASHES[target]}")
    if total:
        assert total >= 10_000
    assert not CRASHES
