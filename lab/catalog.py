"""The lab's catalog: which benign commands are recorded, with which arguments.

Each ``Command`` names a label (the program it really is), the program looked up
on the system PATH, and its variants. A variant is an argument template whose
``@[...]`` placeholders are drawn from a seeded RNG when the run is planned (a
few variants that must create files first are small functions instead), so a
seed always gives the same run list. ``plan_runs`` also adds renamed runs: a copy
of the binary under another name (``copy``) or the same binary shown with
another argv[0] (``argv0``). The label stays the program the process really is.

Placeholders: ``blob``/``text`` (``:N`` caps the size in bytes), ``sorted``,
``packed:SUFFIX``, ``word``, ``int:A-B``, ``choice:a|b``, ``float``, ``subdir``,
``dirname``, ``script:NAME``, ``url:NAME`` (``url`` alone: a served file),
``base_url`` and the fixed paths ``tree``, ``tree_copy``, ``data``,
``blobs_dir``, ``tar``, ``numbers``, ``json``, ``db``, ``diff_a``, ``diff_b``,
``bigtext``, ``work``.
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from systerns.lab.sandbox import SYSTEM_PATH, WORDS, Sandbox

log = structlog.get_logger(__name__)

#: Seconds a benign run may take before it is interrupted (runs take < 2 s).
RUN_TIMEOUT_S = 15.0

Args = tuple[list[str], Path | None]
Builder = Callable[[Sandbox, random.Random, Path], Args]
_PLACEHOLDER_RE = re.compile(r"@\[([a-z_]+)(?::([^\]]*))?\]")


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of calling a program: a name for the manifest and its builder.

    Attributes:
        load: ``http`` when the run is a server the recorder sends requests to
            while it runs (the last argument is its port); "" otherwise.
    """

    name: str
    build: Builder
    load: str = ""


@dataclass(frozen=True, slots=True)
class Command:
    """A catalog entry: label, program on PATH, the variants it runs with."""

    label: str
    prog: str
    variants: tuple[Variant, ...]


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything needed to record one run and describe it in the manifest.

    Attributes:
        argv: the command as run; ``argv[0]`` is the file executed (a renamed
            copy for ``copy`` renames).
        argv0: argv[0] shown to the program when it differs from ``argv[0]``.
        shown_name: the name ``ps`` shows for the process.
        rename_kind: ``copy``, ``argv0`` or "" when not renamed.
    """

    run_id: str
    label: str
    malicious: bool
    argv: tuple[str, ...]
    variant: str
    cwd: Path
    shown_name: str
    argv0: str | None = None
    rename_kind: str = ""
    stdin: Path | None = None
    netns: bool = False
    timeout_s: float = RUN_TIMEOUT_S
    lang: bool = True
    hard_negative: bool = False
    load: str = ""

    @property
    def renamed(self) -> bool:
        return bool(self.rename_kind)


def _pick(paths: list[Path], rng: random.Random, max_bytes: str | None) -> Path:
    cap = int(max_bytes) if max_bytes else None
    return rng.choice([p for p in paths if cap is None or p.stat().st_size <= cap])


def _fill(
    key: str, opt: str | None, sb: Sandbox, rng: random.Random, work: Path
) -> str:
    if key == "blob":
        return str(_pick(sb.blobs, rng, opt))
    if key == "text":
        return str(_pick(sb.texts, rng, opt))
    if key == "sorted":
        return str(rng.choice(sb.sorted_texts))
    if key == "packed":
        return str(rng.choice(sb.compressed[opt or "gz"]))
    if key == "word":
        return rng.choice(WORDS)
    if key == "int":
        lo, hi = (opt or "1-100").split("-")
        return str(rng.randint(int(lo), int(hi)))
    if key == "choice":
        return rng.choice((opt or "").split("|"))
    if key == "float":
        return f"{rng.random():.2f}"
    if key == "dirname":
        return f"d{rng.randrange(7)}"
    if key == "subdir":
        return str(sb.data / "tree" / f"d{rng.randrange(7)}")
    if key == "script":
        return str(sb.scripts / (opt or ""))
    if key == "url":
        return f"http://127.0.0.1:{sb.port}/{opt or rng.choice(sb.served)}"
    if key == "base_url":
        return f"http://127.0.0.1:{sb.port}"
    if key == "csrc":
        return str(rng.choice(sb.c_sources))
    fixed = {
        "tree": sb.tree,
        "tree_copy": sb.tree_copy,
        "data": sb.data,
        "blobs_dir": sb.data / "blobs",
        "tar": sb.tar,
        "numbers": sb.numbers,
        "json": sb.json_doc,
        "db": sb.sqlite_db,
        "work": work,
        "diff_a": sb.text_pair[0] if sb.text_pair else None,
        "diff_b": sb.text_pair[1] if sb.text_pair else None,
        "bigtext": sb.texts[-1] if sb.texts else None,
        "huge_blob": sb.huge_blob,
        "huge_text": sb.huge_text,
    }
    value = fixed.get(key)
    if value is None:
        raise KeyError(f"unknown lab placeholder {key!r}")
    return str(value)


def expand(template: str, sb: Sandbox, rng: random.Random, work: Path) -> str:
    """Fill every ``@[...]`` placeholder of one argument template."""
    return _PLACEHOLDER_RE.sub(
        lambda m: _fill(m.group(1), m.group(2), sb, rng, work), template
    )


def _t(name: str, *args: str, stdin: str | None = None) -> Variant:
    def build(sb: Sandbox, rng: random.Random, work: Path) -> Args:
        filled = [expand(a, sb, rng, work) for a in args]
        return filled, Path(expand(stdin, sb, rng, work)) if stdin else None

    return Variant(name, build)


def _mv_file(sb: Sandbox, rng: random.Random, work: Path) -> Args:
    src = work / "moving.bin"
    shutil.copyfile(_pick(sb.blobs, rng, "1500000"), src)
    return [str(src), str(work / "moved.bin")], None


def _mv_dir(sb: Sandbox, rng: random.Random, work: Path) -> Args:
    src = work / "dir_a"
    shutil.copytree(sb.data / "tree" / f"d{rng.randrange(7)}", src)
    return [str(src), str(work / "dir_b")], None


def _mv_many(sb: Sandbox, rng: random.Random, work: Path) -> Args:
    dst = work / "dest"
    dst.mkdir()
    srcs = []
    for i in range(rng.randint(3, 12)):
        p = work / f"item{i}.txt"
        shutil.copyfile(_pick(sb.texts, rng, "80000"), p)
        srcs.append(str(p))
    return ["-t", str(dst), *srcs], None


def _py_threads(sb: Sandbox, rng: random.Random, work: Path) -> Args:
    blobs = [str(_pick(sb.blobs, rng, None)) for _ in range(rng.randint(2, 4))]
    return [str(sb.scripts / "threads.py"), *blobs], None


def _cmd(label: str, *variants: Variant, prog: str | None = None) -> Command:
    return Command(label, prog or label, variants)


def _hashes(tool: str) -> Command:
    extra = () if tool == "cksum" else (_t(f"{tool}_binary", "-b", "@[blob]"),)
    return _cmd(
        tool,
        _t(f"{tool}_blob", "@[blob]"),
        _t(f"{tool}_two", "@[blob]", "@[text]"),
        _t(f"{tool}_text", "@[text]"),
        _t(f"{tool}_stdin", stdin="@[blob]"),
        *extra,
    )


#: The catalog, in recording order.
CATALOG: tuple[Command, ...] = (
    _cmd(
        "ls",
        _t("ls_la", "-la", "@[subdir]"),
        _t("ls_recursive", "-R", "@[tree]"),
        _t("ls_usr_bin", "-1", "/usr/bin"),
        _t("ls_by_size", "-lhS", "@[blobs_dir]"),
        _t("ls_root", "/"),
        _t("ls_etc_iso", "-l", "--time-style=full-iso", "/etc"),
    ),
    _cmd(
        "cat",
        _t("cat_blob", "@[blob]"),
        _t("cat_text", "@[text]"),
        _t("cat_two", "@[text]", "@[text]"),
        _t("cat_numbered", "-n", "@[text:300000]"),
        _t("cat_stdin", stdin="@[blob]"),
    ),
    *(_hashes(t) for t in ("sha256sum", "md5sum", "sha1sum", "sha512sum", "b2sum")),
    _hashes("cksum"),
    _cmd(
        "gzip",
        _t("gzip_compress", "-c", "-@[int:1-9]", "@[blob:1500000]"),
        _t("gzip_text", "-c", "@[text]"),
        _t("gzip_decompress", "-dc", "@[packed:gz]"),
        _t("gzip_test", "-t", "@[packed:gz]"),
        _t("gzip_list", "-l", "@[packed:gz]"),
    ),
    _cmd(
        "bzip2",
        _t("bzip2_compress", "-c", "-@[int:1-9]", "@[blob:700000]"),
        _t("bzip2_decompress", "-dc", "@[packed:bz2]"),
        _t("bzip2_test", "-t", "@[packed:bz2]"),
    ),
    _cmd(
        "xz",
        _t("xz_compress", "-c", "-@[int:0-3]", "@[blob:700000]"),
        _t("xz_decompress", "-dc", "@[packed:xz]"),
        _t("xz_threads", "-T2", "-c", "-1", "@[text:1000000]"),
        _t("xz_list", "-l", "@[packed:xz]"),
    ),
    _cmd(
        "zstd",
        _t("zstd_compress", "-c", "-q", "-@[int:1-9]", "@[blob]"),
        _t("zstd_decompress", "-dc", "-q", "@[packed:zst]"),
        _t("zstd_threads", "-T2", "-c", "-q", "@[text]"),
        _t("zstd_test", "-t", "-q", "@[packed:zst]"),
    ),
    _cmd(
        "tar",
        _t("tar_create", "-cf", "@[work]/out.tar", "-C", "@[data]", "tree"),
        _t("tar_create_gz", "-czf", "@[work]/out.tgz", "-C", "@[tree]", "@[dirname]"),
        _t("tar_list", "-tvf", "@[tar]"),
        _t("tar_extract", "-xf", "@[tar]", "-C", "@[work]"),
    ),
    _cmd(
        "find",
        _t("find_name", "@[tree]", "-name", "*.txt"),
        _t("find_size", "@[tree]", "-type", "f", "-size", "+@[choice:1|5|10]k"),
        _t("find_doc", "/usr/share/doc", "-maxdepth", "2", "-type", "f"),
        _t("find_newer", "@[data]", "-newer", "@[numbers]"),
        _t("find_etc_conf", "/etc", "-name", "*.conf"),
    ),
    _cmd(
        "grep",
        _t("grep_count", "-c", "@[word]", "@[text]"),
        _t("grep_in", "-in", "@[word]", "@[text]"),
        _t("grep_recursive", "-r", "@[word]", "@[tree]"),
        _t("grep_regex", "-E", "@[word]|@[word] [0-9]+", "@[text]"),
        _t("grep_invert", "-vc", "@[word]", "@[text]"),
        _t("grep_files", "-lr", "@[word]", "@[tree]"),
    ),
    _cmd(
        "sed",
        _t("sed_subst", "-n", "s/@[word]/X/gp", "@[text]"),
        _t("sed_delete", "1,@[int:10-500]d", "@[text]"),
        _t("sed_vowels", "s/[aeiou]/_/g", "@[text]"),
        _t("sed_multi", "-e", "/error/d", "-e", "s/ /,/g", "@[text]"),
    ),
    _cmd(
        "awk",
        _t("awk_fields", "{n += NF} END {print n}", "@[text]"),
        _t("awk_column", "{print $2}", "@[text]"),
        _t("awk_every", "NR % @[int:2-20] == 0", "@[text]"),
        _t("awk_count", "{c[$1]++} END {for (k in c) print k, c[k]}", "@[text]"),
    ),
    _cmd(
        "sort",
        _t("sort_text", "@[text]"),
        _t("sort_numeric", "-n", "@[numbers]"),
        _t("sort_reverse_unique", "-ru", "@[text]"),
        _t("sort_key", "-k2", "@[text]"),
        _t("sort_parallel", "--parallel=2", "-S", "4M", "@[bigtext]"),
        _t("sort_output", "-o", "@[work]/sorted.txt", "@[text]"),
    ),
    _cmd(
        "uniq",
        _t("uniq_count", "-c", "@[sorted]"),
        _t("uniq_dups", "-d", "@[sorted]"),
        _t("uniq_plain", "@[sorted]"),
        _t("uniq_stdin", "-u", stdin="@[sorted]"),
    ),
    _cmd(
        "wc",
        _t("wc_lines", "-l", "@[text]"),
        _t("wc_bytes", "-c", "@[blob]"),
        _t("wc_words", "-w", "@[text]", "@[text]"),
        _t("wc_all", "@[blob]"),
        _t("wc_stdin", "-m", stdin="@[text]"),
    ),
    _cmd(
        "head",
        _t("head_lines", "-n", "@[int:1-5000]", "@[text]"),
        _t("head_bytes", "-c", "@[int:10-500000]", "@[blob]"),
        _t("head_stdin", "-n", "20", stdin="@[text]"),
    ),
    _cmd(
        "tail",
        _t("tail_lines", "-n", "@[int:1-5000]", "@[text]"),
        _t("tail_bytes", "-c", "@[int:10-500000]", "@[blob]"),
        _t("tail_from", "-n", "+@[int:2-3000]", "@[text]"),
    ),
    _cmd(
        "cut",
        _t("cut_fields", "-d", " ", "-f1,3", "@[text]"),
        _t("cut_chars", "-c1-@[int:2-40]", "@[text]"),
        _t("cut_rest", "-d", " ", "-f2-", stdin="@[text]"),
    ),
    _cmd(
        "tr",
        _t("tr_upper", "a-z", "A-Z", stdin="@[text]"),
        _t("tr_delete", "-d", "aeiou", stdin="@[text]"),
        _t("tr_squeeze", "-s", " ", stdin="@[text]"),
        _t("tr_binary", "-dc", "a-z\n", stdin="@[blob]"),
    ),
    _cmd(
        "cp",
        _t("cp_file", "@[blob]", "@[work]/copy.bin"),
        _t("cp_tree", "-r", "@[subdir]", "@[work]/tree"),
        _t("cp_archive", "-a", "@[text]", "@[work]/t.txt"),
    ),
    _cmd(
        "mv",
        Variant("mv_file", _mv_file),
        Variant("mv_dir", _mv_dir),
        Variant("mv_many", _mv_many),
    ),
    _cmd(
        "du",
        _t("du_summary", "-sh", "@[tree]"),
        _t("du_all", "-a", "@[subdir]"),
        _t("du_doc", "-s", "/usr/share/doc"),
        _t("du_depth", "-h", "--max-depth=1", "/etc"),
    ),
    # NOTE: ps prints pids and comm only, so other users' command lines never
    # land in the corpus.
    _cmd(
        "ps",
        _t("ps_comm", "-e", "-o", "pid,comm"),
        _t("ps_stat", "-eo", "pid,ppid,stat,comm"),
        _t("ps_init", "-p", "1", "-o", "pid,etime,comm"),
        _t("ps_cpu", "-e", "--sort=-pcpu", "-o", "pid,pcpu,rss,comm"),
    ),
    _cmd(
        "python3",
        _t("py_hash", "@[script:hash_file.py]", "@[blob]"),
        _t("py_words", "@[script:words.py]", "@[text]", "@[int:3-30]"),
        _t("py_walk", "@[script:walk.py]", "@[tree]"),
        _t(
            "py_json", "@[script:json_roundtrip.py]", "@[work]/d.json", "@[int:50-2000]"
        ),
        _t("py_sieve", "@[script:sieve.py]", "@[int:10000-2000000]"),
        _t("py_sqlite", "@[script:sqlite_mem.py]", "@[int:100-50000]"),
        Variant("py_threads", _py_threads),
    ),
    _cmd(
        "bash",
        _t("bash_loop", "@[script:loop.sh]", "@[work]/out.txt", "@[int:20-200]"),
        _t("bash_sizes", "@[script:sizes.sh]", "@[subdir]/s0"),
        _t("bash_readlines", "@[script:readlines.sh]", "@[text:15000]"),
        _t("bash_pipeline", "@[script:pipeline.sh]", "@[text]", "@[word]"),
        _t("bash_arith", "@[script:arith.sh]", "@[int:200-3000]"),
    ),
    _cmd(
        "date",
        _t("date_plain"),
        _t("date_epoch", "-u", "+%s"),
        _t("date_parse", "-d", "@@[int:0-2000000000]", "+%F %T"),
        _t("date_rfc", "-R"),
        _t("date_iso", "--iso-8601=ns"),
    ),
    _cmd(
        "stat",
        _t("stat_file", "@[blob]"),
        _t("stat_format", "-c", "%s %n", "@[blob]", "@[text]"),
        _t("stat_fs", "-f", "/"),
        _t("stat_dir", "-L", "@[subdir]"),
    ),
    _cmd(
        "base64",
        _t("base64_encode", "@[blob:700000]"),
        _t("base64_decode", "-d", "@[packed:b64]"),
        _t("base64_oneline", "-w", "0", "@[blob:200000]"),
    ),
    _cmd(
        "od",
        _t("od_hex", "-A", "x", "-t", "x1z", "-N", "@[int:64-65536]", "@[blob]"),
        _t("od_chars", "-c", "-N", "@[int:64-65536]", "@[text]"),
        _t("od_ints", "-t", "d4", "-N", "@[int:64-65536]", "@[blob]"),
    ),
    _cmd(
        "diff",
        _t("diff_plain", "@[diff_a]", "@[diff_b]"),
        _t("diff_unified", "-u", "@[diff_a]", "@[diff_b]"),
        _t("diff_tree", "-r", "@[tree]", "@[tree_copy]"),
        _t("diff_brief", "-q", "@[text]", "@[text]"),
    ),
    _cmd(
        "openssl",
        _t("openssl_dgst", "dgst", "@[choice:-sha256|-sha512|-md5]", "@[blob]"),
        _t(
            "openssl_enc",
            "enc",
            "-aes-256-cbc",
            "-pbkdf2",
            "-pass",
            "pass:labpass",
            "-in",
            "@[blob:1500000]",
            "-out",
            "@[work]/enc.bin",
        ),
        _t("openssl_rand", "rand", "-hex", "@[int:8-4096]"),
        _t("openssl_b64", "base64", "-in", "@[blob:200000]"),
    ),
    _cmd(
        "curl",
        _t("curl_download", "-s", "-o", "@[work]/download.bin", "@[url]"),
        _t("curl_head", "-sI", "@[url:index.html]"),
        _t(
            "curl_missing",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "@[base_url]/missing@[int:0-99]",
        ),
        _t("curl_stdout", "-s", "--max-time", "5", "@[url:file_1024.bin]"),
    ),
    _cmd(
        "xxd",
        _t("xxd_dump", "@[blob:50000]"),
        _t("xxd_plain", "-p", "@[blob:50000]"),
        _t("xxd_len", "-l", "@[int:16-20000]", "@[blob]"),
    ),
    _cmd(
        "jq",
        _t("jq_len", ".items | length", "@[json]"),
        _t("jq_select", "-c", ".items[] | select(.score > @[float]) | .id", "@[json]"),
        _t("jq_first", ".items[0]", "@[json]"),
    ),
    _cmd(
        "perl",
        _t("perl_grep", "-ne", "print if /@[word]/", "@[text]"),
        _t(
            "perl_sum",
            "-e",
            "my $s = 0; $s += $_ for 1 .. @[int:1000-300000]; print $s",
        ),
        _t("perl_fields", "-lane", "$n += @F; END { print $n }", "@[text]"),
    ),
    _cmd(
        "sqlite3",
        _t("sqlite_count", "@[db]", "select count(*) from t"),
        _t("sqlite_group", "@[db]", "select name, count(*) from t group by name"),
        _t("sqlite_avg", "@[db]", "select avg(v) from t where k % @[int:2-13] = 0"),
    ),
    _cmd("nl", _t("nl_text", "@[text]"), _t("nl_all", "-ba", "@[text]")),
    _cmd(
        "seq",
        _t("seq_n", "1", "@[int:10-200000]"),
        _t("seq_width", "-w", "1", "3", "@[int:100-100000]"),
        _t("seq_float", "-f", "%.3f", "0", "0.5", "@[int:10-20000]"),
    ),
    _cmd(
        "shuf",
        _t("shuf_text", "@[text]"),
        _t("shuf_n", "-n", "@[int:1-100]", "@[text]"),
        _t("shuf_range", "-i1-@[int:10-100000]"),
    ),
    _cmd(
        "split",
        _t("split_bytes", "-b", "@[choice:10|100|500]k", "@[blob]", "@[work]/part_"),
        _t("split_lines", "-l", "@[int:100-5000]", "@[text]", "@[work]/lines_"),
    ),
    _cmd(
        "file",
        _t("file_blob", "@[blob]"),
        _t("file_text", "@[text]"),
        _t("file_brief", "-b", "@[json]"),
        _t("file_tar", "@[tar]"),
    ),
)

def _http_server(sb: Sandbox, rng: random.Random, work: Path) -> Args:
    from systerns.lab.server import free_port

    return ["-m", "http.server", "--bind", "127.0.0.1", "--directory",
            str(sb.www), str(free_port())], None


#: Hard negatives: benign programs that burn CPU for seconds with few syscalls
#: or serve requests for a while, the shapes a miner detector must not confuse
#: with mining. Labels are the programs' own; ``gcc`` appears only here.
HARD_CATALOG: tuple[Command, ...] = (
    _cmd(
        "gzip",
        _t("gzip_huge_text", "-9", "-c", "@[huge_text]"),
        _t("gzip_huge_blob", "-@[int:4-9]", "-c", "@[huge_blob]"),
    ),
    _cmd("bzip2", _t("bzip2_huge_text", "-9", "-c", "@[huge_text]")),
    _cmd(
        "xz",
        _t("xz_big_text", "-@[int:4-6]", "-c", "@[bigtext]"),
        _t("xz_huge_threads", "-T2", "-3", "-c", "@[huge_text]"),
    ),
    _cmd("zstd", _t("zstd_big_19", "-@[int:15-19]", "-q", "-c", "@[bigtext]")),
    *(
        _cmd(tool, _t(f"{tool}_huge", "@[huge_blob]"))
        for tool in ("sha256sum", "md5sum", "sha1sum", "sha512sum", "b2sum", "cksum")
    ),
    _cmd(
        "python3",
        _t("py_cpu_loop", "@[script:cpu_loop.py]", "@[int:2000000-6000000]"),
        _t("py_pbkdf2", "@[script:pbkdf2.py]", "@[int:1000000-4000000]"),
        _t("py_zlib9", "@[script:zlib9.py]", "@[huge_text]"),
        Variant("py_http_server", _http_server, load="http"),
    ),
    _cmd(
        "openssl",
        _t(
            "openssl_speed",
            "speed",
            "-seconds",
            "@[int:1-3]",
            "-bytes",
            "@[choice:1024|16384]",
            "@[choice:sha256|sha512|md5]",
        ),
        _t(
            "openssl_speed_evp",
            "speed",
            "-seconds",
            "@[int:1-3]",
            "-bytes",
            "16384",
            "-evp",
            "@[choice:aes-128-gcm|chacha20-poly1305|sha256]",
        ),
        _t(
            "openssl_speed_multi",
            "speed",
            "-multi",
            "2",
            "-seconds",
            "2",
            "-bytes",
            "16384",
            "sha256",
        ),
    ),
    _cmd(
        "gcc",
        _t("gcc_compile", "-O2", "-c", "@[csrc]", "-o", "@[work]/x.o"),
        _t("gcc_build", "-O@[int:0-2]", "@[csrc]", "-o", "@[work]/x"),
    ),
    _cmd(
        "sort",
        _t("sort_huge", "--parallel=2", "-S", "16M", "-o", "@[work]/s.txt",
           "@[huge_text]"),
    ),
)
#: Seconds a hard-negative run may take (most take 1-6 s).
HARD_TIMEOUT_S = 30.0
#: How long the served runs (``load`` variants) serve, in seconds.
SERVE_SECONDS_RANGE = (4, 9)

#: Labels of benign programs.
BENIGN_LABELS: frozenset[str] = frozenset(c.label for c in CATALOG + HARD_CATALOG)

#: Renamed runs per label: (kind, name shown). ``copy`` copies the binary under
#: the name, ``argv0`` keeps the binary and changes argv[0].
RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "sha256sum": (("copy", "kworker"), ("argv0", "[kworker/u4:1]")),
    "gzip": (("copy", "nginx"),),
    "find": (("copy", "sshd"),),
    "cat": (("copy", "systemd"),),
    "xz": (("copy", "containerd"),),
    "sort": (("copy", "postgres"),),
    "tar": (("copy", "cron"),),
    "md5sum": (("copy", "dockerd"),),
    "bzip2": (("copy", "kthreadd"),),
    "curl": (("copy", "apt"),),
    "openssl": (("copy", "httpd"), ("argv0", "sshd: root@pts/0")),
    "grep": (("argv0", "ls"),),
}


def resolve_programs(
    commands: tuple[Command, ...] = CATALOG + HARD_CATALOG,
    only: set[str] | None = None,
) -> dict[str, str]:
    """Map each catalog label to its program's path; missing programs are skipped.

    Args:
        commands: the catalog.
        only: keep these labels only (all when None).
    """
    found: dict[str, str] = {}
    for cmd in commands:
        if only is not None and cmd.label not in only:
            continue
        exe = shutil.which(cmd.prog, path=SYSTEM_PATH)
        if exe is None:
            log.warning("lab_program_missing", label=cmd.label, prog=cmd.prog)
            continue
        found[cmd.label] = exe
    return found


def plan_runs(
    sb: Sandbox,
    programs: dict[str, str],
    *,
    runs_per_command: int,
    seed: int,
    commands: tuple[Command, ...] = CATALOG,
) -> list[RunSpec]:
    """Draw the benign runs: ``runs_per_command`` each, plus renamed runs.

    Builders run here, in a fixed order, so the RNG gives the same arguments for
    the same seed; a few (``mv``) create their input files in the run's folder.

    Args:
        sb: the prepared sandbox.
        programs: label -> program path, from ``resolve_programs``.
        runs_per_command: plain runs per label.
        seed: RNG seed.
        commands: the catalog.

    Returns:
        Run specs in recording order.
    """
    rng = random.Random(seed)  # noqa: S311 - seeded for reproducible lab data, not for security
    n_renamed = max(2, runs_per_command // 4)
    specs: list[RunSpec] = []
    for cmd in commands:
        exe = programs.get(cmd.label)
        if exe is None:
            continue
        plan: list[tuple[str, str]] = [("", "")] * runs_per_command
        for kind, name in RENAMES.get(cmd.label, ()):
            plan += [(kind, name)] * n_renamed
        for i, (kind, name) in enumerate(plan):
            variant = (
                cmd.variants[i % len(cmd.variants)]
                if not kind
                else rng.choice(cmd.variants)
            )
            tag = f"{kind}-{name}-" if kind else ""
            tag = "".join(c if c.isalnum() or c == "-" else "_" for c in tag)
            run_id = f"{cmd.label}-{tag}{i:03d}"
            wd = sb.work_dir(run_id)
            args, stdin = variant.build(sb, rng, wd)
            prog, argv0, shown = exe, None, Path(exe).name
            if kind == "copy":
                prog = str(sb.copy_binary(exe, name))
                shown = name
            elif kind == "argv0":
                argv0 = shown = name
            specs.append(
                RunSpec(
                    run_id=run_id,
                    label=cmd.label,
                    malicious=False,
                    argv=(prog, *args),
                    variant=variant.name,
                    cwd=wd,
                    shown_name=shown,
                    argv0=argv0,
                    rename_kind=kind,
                    stdin=stdin,
                    lang=rng.random() < 0.5,
                )
            )
    return specs


def plan_hard_runs(
    sb: Sandbox,
    programs: dict[str, str],
    *,
    runs_per_variant: int,
    seed: int,
    commands: tuple[Command, ...] = HARD_CATALOG,
) -> list[RunSpec]:
    """Draw the hard-negative runs: ``runs_per_variant`` of each variant.

    Run ids are ``<label>-hard-<n>``; none is renamed. Served variants run for
    a few seconds and are interrupted (exit code 124 is expected for them).

    Args:
        sb: the prepared sandbox (with its huge inputs).
        programs: label -> program path, from ``resolve_programs``.
        runs_per_variant: runs of each variant.
        seed: RNG seed.
        commands: the hard-negative catalog.
    """
    rng = random.Random(seed * 7 + 11)  # noqa: S311 - seeded for reproducible lab data, not for security
    specs: list[RunSpec] = []
    counter: dict[str, int] = {}
    for cmd in commands:
        exe = programs.get(cmd.label)
        if exe is None:
            continue
        for variant in cmd.variants:
            for _ in range(runs_per_variant):
                n = counter.get(cmd.label, 0)
                counter[cmd.label] = n + 1
                run_id = f"{cmd.label}-hard-{n:03d}"
                wd = sb.work_dir(run_id)
                args, stdin = variant.build(sb, rng, wd)
                timeout_s = (
                    float(rng.randint(*SERVE_SECONDS_RANGE))
                    if variant.load
                    else HARD_TIMEOUT_S
                )
                specs.append(
                    RunSpec(
                        run_id=run_id,
                        label=cmd.label,
                        malicious=False,
                        argv=(exe, *args),
                        variant=variant.name,
                        cwd=wd,
                        shown_name=Path(exe).name,
                        stdin=stdin,
                        timeout_s=timeout_s,
                        lang=rng.random() < 0.5,
                        hard_negative=True,
                        load=variant.load,
                    )
                )
    return specs
