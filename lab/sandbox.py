"""Builds the lab's sandbox: seeded input files, scripts and renamed binary copies.

Everything a lab run reads or writes lives under one folder, generated from a
seeded RNG so two builds with the same seed feed the programs the same bytes.
Files are made with Python's own modules (gzip, bz2, lzma, tarfile, sqlite3),
never by the traced programs, so no recording depends on another.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import json
import lzma
import random
import shutil
import sqlite3
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

#: PATH for lab runs: system directories only, so no shim or venv is traced.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BLOB_SIZES_BYTES = (
    1_024,
    3_000,
    10_000,
    50_000,
    200_000,
    700_000,
    1_500_000,
    3_000_000,
)
TEXT_SIZES_BYTES = (2_000, 15_000, 80_000, 300_000, 1_000_000, 2_500_000)
SERVED_SIZES_BYTES = (1_024, 20_000, 300_000, 2_000_000)
TREE_FILES = 160
#: Inputs of the CPU-heavy, long-running benign runs (hard negatives).
HUGE_BLOB_BYTES = 48_000_000
HUGE_TEXT_BYTES = 12_000_000
#: Functions in the generated C sources that gcc compiles.
C_SOURCE_FUNCTIONS = (150, 600, 1500)
WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima "
    "mike november oscar papa quebec romeo sierra tango uniform victor whiskey "
    "xray yankee zulu error warning info debug request response session token "
    "kernel socket buffer thread process memory cache disk network packet user"
).split()

PY_SCRIPTS: dict[str, str] = {
    "hash_file.py": (
        "import hashlib, sys\n"
        "h = hashlib.sha256()\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    for chunk in iter(lambda: f.read(65536), b''):\n"
        "        h.update(chunk)\n"
        "print(h.hexdigest())\n"
    ),
    "words.py": (
        "import collections, sys\n"
        "c = collections.Counter()\n"
        "with open(sys.argv[1], encoding='utf-8') as f:\n"
        "    for line in f:\n"
        "        c.update(line.split())\n"
        "for w, n in c.most_common(int(sys.argv[2])):\n"
        "    print(w, n)\n"
    ),
    "walk.py": (
        "import os, sys\n"
        "total = 0\n"
        "for root, dirs, files in os.walk(sys.argv[1]):\n"
        "    for name in files:\n"
        "        total += os.stat(os.path.join(root, name)).st_size\n"
        "print(total)\n"
    ),
    "json_roundtrip.py": (
        "import json, random, sys\n"
        "rng = random.Random(int(sys.argv[2]))\n"
        "n = int(sys.argv[2])\n"
        "doc = {str(i): [rng.random() for _ in range(20)] for i in range(n)}\n"
        "with open(sys.argv[1], 'w') as f:\n"
        "    json.dump(doc, f)\n"
        "with open(sys.argv[1]) as f:\n"
        "    print(len(json.load(f)))\n"
    ),
    "sieve.py": (
        "import sys\n"
        "n = int(sys.argv[1])\n"
        "s = bytearray([1]) * (n + 1)\n"
        "s[0:2] = b'\\0\\0'\n"
        "for i in range(2, int(n ** 0.5) + 1):\n"
        "    if s[i]:\n"
        "        s[i * i::i] = bytes(len(s[i * i::i]))\n"
        "print(sum(s))\n"
    ),
    "sqlite_mem.py": (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(':memory:')\n"
        "db.execute('create table t (k integer, v text)')\n"
        "db.executemany('insert into t values (?, ?)',\n"
        "               ((i, str(i) * 3) for i in range(int(sys.argv[1]))))\n"
        "print(db.execute('select count(*), sum(k) from t').fetchone())\n"
    ),
    "cpu_loop.py": (
        "import sys\n"
        "n = int(sys.argv[1])\n"
        "acc = 0\n"
        "for i in range(n):\n"
        "    acc = (acc * 31 + i * i) % 1000003\n"
        "print(acc)\n"
    ),
    "pbkdf2.py": (
        "import hashlib, sys\n"
        "key = hashlib.pbkdf2_hmac('sha256', b'lab password', b'salt', "
        "int(sys.argv[1]))\n"
        "print(key.hex())\n"
    ),
    "zlib9.py": (
        "import sys, zlib\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    data = f.read()\n"
        "print(len(zlib.compress(data, 9)))\n"
    ),
    "threads.py": (
        "import sys, threading, zlib\n"
        "def work(path):\n"
        "    with open(path, 'rb') as f:\n"
        "        zlib.crc32(f.read())\n"
        "ts = [threading.Thread(target=work, args=(p,)) for p in sys.argv[1:]]\n"
        "for t in ts:\n"
        "    t.start()\n"
        "for t in ts:\n"
        "    t.join()\n"
        "print(len(ts))\n"
    ),
}

SH_SCRIPTS: dict[str, str] = {
    "loop.sh": (
        'out="$1"; n="$2"; : > "$out"\n'
        'for i in $(seq 1 "$n"); do echo "line $i" >> "$out"; done\n'
        'wc -l < "$out"\n'
    ),
    "sizes.sh": (
        'for f in "$1"/*; do\n  if [ -f "$f" ]; then wc -c < "$f"; fi\ndone\n'
    ),
    "readlines.sh": (
        'n=0\nwhile IFS= read -r line; do n=$((n + ${#line})); done < "$1"\necho "$n"\n'
    ),
    "pipeline.sh": 'grep -o "$2" "$1" | sort | uniq -c | head -n 5\n',
    "arith.sh": (
        "s=0; i=0\n"
        'while [ "$i" -lt "$1" ]; do s=$((s + i * i % 7)); i=$((i + 1)); done\n'
        'echo "$s"\n'
    ),
}


@dataclass
class Sandbox:
    """Paths of the generated inputs, filled by ``prepare``.

    Attributes:
        root: the sandbox folder (wiped and rebuilt by ``prepare``).
        blobs: random binary files, smallest first.
        texts: word-text files, smallest first.
        sorted_texts: the same texts, sorted (for uniq, join, comm).
        compressed: ``{suffix: [files]}`` for gz, bz2, xz, zst and b64.
        tree: a folder tree of small files.
        port: the lab HTTP server's port, once it runs.
    """

    root: Path
    blobs: list[Path] = field(default_factory=list)
    texts: list[Path] = field(default_factory=list)
    sorted_texts: list[Path] = field(default_factory=list)
    compressed: dict[str, list[Path]] = field(default_factory=dict)
    tree: Path | None = None
    tree_copy: Path | None = None
    tar: Path | None = None
    numbers: Path | None = None
    json_doc: Path | None = None
    sqlite_db: Path | None = None
    text_pair: tuple[Path, Path] | None = None
    served: list[str] = field(default_factory=list)
    port: int = 0
    copies: dict[str, Path] = field(default_factory=dict)
    huge_blob: Path | None = None
    huge_text: Path | None = None
    c_sources: list[Path] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def scripts(self) -> Path:
        return self.root / "scripts"

    @property
    def www(self) -> Path:
        return self.root / "www"

    def work_dir(self, run_id: str) -> Path:
        """A fresh output folder for one run."""
        d = self.work / run_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def load_served(self) -> None:
        """Fill ``served`` from the files of an existing sandbox's ``www``."""
        self.served = (sorted(p.name for p in self.www.iterdir() if p.is_file())
                       if self.www.is_dir() else [])

    def env(self, *, lang: bool) -> dict[str, str]:
        """Environment for a run: system PATH, sandbox HOME, no proxies."""
        env = {"PATH": SYSTEM_PATH, "HOME": str(self.home), "TERM": "dumb"}
        if lang:
            env["LANG"] = "C.UTF-8"
        return env

    def prepare(self, seed: int, *, huge: bool = True) -> None:
        """Wipe the sandbox and generate every input from ``seed``.

        Args:
            seed: the RNG seed of every generated file.
            huge: also write the big inputs of the hard negatives (~60 MB).
        """
        if self.root.exists():
            shutil.rmtree(self.root)
        for d in (self.data, self.work, self.home, self.bin, self.scripts, self.www):
            d.mkdir(parents=True)
        rng = random.Random(seed)  # noqa: S311 - seeded for reproducible lab data, not for security
        self._make_blobs(rng)
        self._make_texts(rng)
        self._make_tree(rng)
        self._make_archives()
        self._make_docs(rng)
        self._make_scripts()
        self._make_served(rng)
        if huge:
            self._make_huge(rng)
        log.info(
            "lab_sandbox_ready",
            root=str(self.root),
            blobs=len(self.blobs),
            texts=len(self.texts),
            tree_files=TREE_FILES,
        )

    def copy_binary(self, exe: str, name: str) -> Path:
        """Copy a program under another name (a renamed binary) into ``bin``."""
        dst = self.bin / name
        if not dst.exists():
            shutil.copy2(exe, dst)
            dst.chmod(0o755)
        self.copies[name] = dst
        return dst

    def _make_blobs(self, rng: random.Random) -> None:
        d = self.data / "blobs"
        d.mkdir()
        for size in BLOB_SIZES_BYTES:
            p = d / f"blob_{size}.bin"
            p.write_bytes(rng.randbytes(size))
            self.blobs.append(p)

    def _text(self, rng: random.Random, size_bytes: int) -> str:
        lines, n = [], 0
        while n < size_bytes:
            line = " ".join(rng.choices(WORDS, k=rng.randint(3, 14)))
            line += f" {rng.randint(0, 99999)}"
            lines.append(line)
            n += len(line) + 1
        return "\n".join(lines) + "\n"

    def _make_texts(self, rng: random.Random) -> None:
        d = self.data / "texts"
        d.mkdir()
        for size in TEXT_SIZES_BYTES:
            p = d / f"text_{size}.txt"
            body = self._text(rng, size)
            p.write_text(body)
            self.texts.append(p)
            s = d / f"sorted_{size}.txt"
            s.write_text("\n".join(sorted(body.splitlines())) + "\n")
            self.sorted_texts.append(s)
        self.numbers = d / "numbers.txt"
        self.numbers.write_text(
            "\n".join(str(rng.randint(-(10**6), 10**6)) for _ in range(40_000)) + "\n"
        )
        a = self.texts[2].read_text().splitlines()
        b = list(a)
        for _ in range(60):
            i = rng.randrange(len(b))
            b[i] = " ".join(rng.choices(WORDS, k=5))
        pa, pb = d / "diff_a.txt", d / "diff_b.txt"
        pa.write_text("\n".join(a) + "\n")
        pb.write_text("\n".join(b) + "\n")
        self.text_pair = (pa, pb)

    def _make_tree(self, rng: random.Random) -> None:
        self.tree = self.data / "tree"
        exts = (".txt", ".log", ".conf", ".bin", ".json", ".csv")
        for i in range(TREE_FILES):
            sub = self.tree / f"d{i % 7}" / f"s{i % 3}"
            sub.mkdir(parents=True, exist_ok=True)
            ext = exts[i % len(exts)]
            p = sub / f"f{i:03d}{ext}"
            size = rng.choice((100, 900, 4_000, 12_000, 40_000))
            if ext == ".bin":
                p.write_bytes(rng.randbytes(size))
            else:
                p.write_text(self._text(rng, size))
        self.tree_copy = self.data / "tree_copy"
        shutil.copytree(self.tree, self.tree_copy)
        for p in sorted(self.tree_copy.rglob("*.log"))[::5]:
            p.write_text(self._text(rng, 500))

    def _make_archives(self) -> None:
        d = self.data / "packed"
        d.mkdir()
        packed: dict[str, list[Path]] = {
            "gz": [],
            "bz2": [],
            "xz": [],
            "zst": [],
            "b64": [],
        }
        sources = [*self.blobs[:7], *self.texts[:5]]
        for src in sources:
            raw = src.read_bytes()
            for suffix, fn in (
                ("gz", gzip.compress),
                ("bz2", bz2.compress),
                ("xz", lzma.compress),
            ):
                p = d / f"{src.name}.{suffix}"
                p.write_bytes(fn(raw))
                packed[suffix].append(p)
        zstd = shutil.which("zstd", path=SYSTEM_PATH)
        if zstd:
            for src in sources:
                p = d / f"{src.name}.zst"
                subprocess.run([zstd, "-q", "-f", "-o", str(p), str(src)], check=True)
                packed["zst"].append(p)
        for src in self.blobs[:6]:
            p = d / f"{src.name}.b64"
            p.write_bytes(base64.encodebytes(src.read_bytes()))
            packed["b64"].append(p)
        self.compressed = packed
        self.tar = d / "tree.tar"
        with tarfile.open(self.tar, "w") as tf:
            assert self.tree is not None
            tf.add(self.tree, arcname="tree")

    def _make_docs(self, rng: random.Random) -> None:
        self.json_doc = self.data / "doc.json"
        items = [
            {
                "id": i,
                "name": rng.choice(WORDS),
                "score": rng.random(),
                "tags": rng.sample(WORDS, 3),
            }
            for i in range(2_000)
        ]
        self.json_doc.write_text(json.dumps({"items": items}))
        self.sqlite_db = self.data / "lab.db"
        db = sqlite3.connect(self.sqlite_db)
        db.execute("create table t (k integer primary key, name text, v real)")
        db.executemany(
            "insert into t values (?, ?, ?)",
            ((i, rng.choice(WORDS), rng.random()) for i in range(5_000)),
        )
        db.commit()
        db.close()

    def _make_scripts(self) -> None:
        for name, body in {**PY_SCRIPTS, **SH_SCRIPTS}.items():
            (self.scripts / name).write_text(body)

    def _make_served(self, rng: random.Random) -> None:
        for size in SERVED_SIZES_BYTES:
            name = f"file_{size}.bin"
            (self.www / name).write_bytes(rng.randbytes(size))
            self.served.append(name)
        (self.www / "index.html").write_text("<html><body>lab</body></html>\n")
        self.served.append("index.html")

    def _make_huge(self, rng: random.Random) -> None:
        """Big inputs and C sources for the hard negatives (CPU-heavy benign runs)."""
        d = self.data / "huge"
        d.mkdir()
        self.huge_blob = d / "huge_blob.bin"
        self.huge_blob.write_bytes(rng.randbytes(HUGE_BLOB_BYTES))
        self.huge_text = d / "huge_text.txt"
        with open(self.huge_text, "w") as fh:
            n = 0
            while n < HUGE_TEXT_BYTES:
                chunk = self._text(rng, 1_000_000)
                fh.write(chunk)
                n += len(chunk)
        for n_funcs in C_SOURCE_FUNCTIONS:
            p = d / f"gen_{n_funcs}.c"
            body = ["#include <stdio.h>\n"]
            for i in range(n_funcs):
                k = rng.randint(3, 97)
                body.append(
                    f"static long f{i}(long x) {{ long s = 0; "
                    f"for (long j = 0; j < x; j++) s += (j * {k}) ^ (s >> 3); "
                    f"return s + {i}; }}\n"
                )
            calls = " + ".join(f"f{i}(n)" for i in range(n_funcs))
            body.append(
                f"int main(void) {{ long n = 3; "
                f"printf(\"%ld\\n\", {calls}); return 0; }}\n"
            )
            p.write_text("".join(body))
            self.c_sources.append(p)
