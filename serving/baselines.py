"""Two simple detectors the model is compared with in every evaluation report.

* ``name rule``: what a rule engine with a list of miner names and pool strings
  does (the idea of Falco's miner rules, our own list): the process name and
  command line are searched for known miner programs and stratum/pool markers.
  Its command answer is the name the process shows.
* ``n-gram``: a classical model on the syscall sequence itself: counts of syscall
  1-, 2- and 3-grams, hashed, TF-IDF weighted, and two scikit-learn logistic
  regressions (command, malicious), fitted on the same training runs as the model
  with a fixed seed.

Both answer per row (a judgement of a run's main process): the n-gram model sees
the first ``n_events`` syscalls of the run's main process, what the session had
seen at that judgement.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import structlog

from systerns.core.events import CPU_EVENT
from systerns.core.verdicts import normalize_name
from systerns.serving.dataset import UNKNOWN, Split

log = structlog.get_logger(__name__)

#: Program names of public CPU/GPU miners and of known mining malware payloads.
MINER_NAMES: frozenset[str] = frozenset(
    {
        "xmrig",
        "xmr-stak",
        "xmr-stak-cpu",
        "minerd",
        "cpuminer",
        "cpuminer-multi",
        "ccminer",
        "cgminer",
        "bfgminer",
        "ethminer",
        "nbminer",
        "t-rex",
        "lolminer",
        "nanominer",
        "srbminer",
        "kdevtmpfsi",
        "kinsing",
    }
)
#: Substrings of command lines that only miners use (protocols, pools, flags).
POOL_MARKERS: tuple[str, ...] = (
    "stratum+tcp://",
    "stratum+ssl://",
    "stratum2+tcp://",
    "stratum://",
    "--donate-level",
    "nicehash",
    "minexmr",
    "supportxmr",
    "nanopool",
    "2miners",
    "moneroocean",
    "hashvault",
    "f2pool",
    "xmrpool",
)
NGRAM_ORDERS = (1, 2, 3)
HASH_FEATURES = 1 << 18
_WORD = re.compile(r"[a-z0-9_.+-]+")


def name_rule_is_miner(shown_name: str, cmdline: Sequence[str] | str = ()) -> bool:
    """Whether a process name or command line names a known miner or pool.

    Args:
        shown_name: the process name (comm) or the path it runs from.
        cmdline: its arguments (a list, or one string).
    """
    text = cmdline if isinstance(cmdline, str) else " ".join(cmdline)
    text = text.lower()
    if normalize_name(shown_name) in MINER_NAMES:
        return True
    words = {normalize_name(w) for w in _WORD.findall(text)}
    if words & MINER_NAMES:
        return True
    return any(marker in text for marker in POOL_MARKERS)


def name_rule_outputs(
    classes: Sequence[str],
    shown_names: Iterable[str],
    cmdlines: Iterable[Sequence[str] | str],
) -> tuple[np.ndarray, np.ndarray]:
    """The name rule's answer as model-shaped outputs.

    Returns:
        ``command_probs`` (one-hot on the class named like the process, else
        ``unknown``) and ``malicious`` (1.0 on a name-rule match, else 0.0).
    """
    index = {c: i for i, c in enumerate(classes)}
    names = list(shown_names)
    probs = np.zeros((len(names), len(classes)), np.float32)
    mal = np.zeros(len(names), np.float32)
    for row, (name, cmd) in enumerate(zip(names, cmdlines, strict=True)):
        probs[row, index.get(normalize_name(name), index[UNKNOWN])] = 1.0
        mal[row] = float(name_rule_is_miner(name, cmd))
    return probs, mal


def main_sequences(runs: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Syscall names of each run's labelled main process, from its ``execve`` on.

    Args:
        runs: runs from ``lab.corpus.load_corpus`` (with ``batches``).
    """
    out: dict[str, list[str]] = {}
    for run in runs:
        pid = run.get("main_pid")
        t0 = int(run.get("main_exec_ts_ns") or 0)
        events = [
            e
            for b in run["batches"]
            if b.process.pid == pid
            for e in b.events
            if e.ts_ns >= t0 and e.name != CPU_EVENT  # syscalls only
        ]
        events.sort(key=lambda e: e.ts_ns)
        out[str(run["run_id"])] = [e.name for e in events]
    return out


def ngrams(syscalls: Sequence[str]) -> list[str]:
    """The 1-, 2- and 3-grams of a syscall sequence, as strings."""
    out: list[str] = []
    for n in NGRAM_ORDERS:
        out += [" ".join(syscalls[i : i + n]) for i in range(len(syscalls) - n + 1)]
    return out


def row_documents(split: Split, sequences: dict[str, list[str]]) -> list[list[str]]:
    """Per row, the syscalls its session had seen (a prefix of the run's)."""
    return [
        sequences.get(str(run_id), [])[: int(n)]
        for run_id, n in zip(split.run_ids, split.n_events, strict=True)
    ]


class NgramBaseline:
    """Logistic regressions on hashed, TF-IDF weighted syscall n-grams.

    Args:
        classes: command classes in output order (the model's, ``unknown`` last).
        seed: random state of the solvers.
        threshold: malicious probability at which it alerts.
    """

    def __init__(
        self, classes: Sequence[str], *, seed: int = 7, threshold: float = 0.5
    ) -> None:
        from sklearn.feature_extraction.text import (
            HashingVectorizer,
            TfidfTransformer,
        )

        self.classes = tuple(classes)
        self.seed = seed
        self.threshold = threshold
        self._hasher = HashingVectorizer(
            analyzer=ngrams, n_features=HASH_FEATURES, alternate_sign=False, norm=None
        )
        self._tfidf = TfidfTransformer(sublinear_tf=True)
        self._command: Any = None
        self._malicious: Any = None
        self._only_class: int | None = None
        self._only_malicious: float | None = None

    def fit(
        self, docs: list[list[str]], labels: np.ndarray, malicious: np.ndarray
    ) -> NgramBaseline:
        """Fit both regressions; rows are weighted so every run counts once.

        Raises:
            ValueError: no rows.
        """
        from sklearn.linear_model import LogisticRegression

        if not docs:
            raise ValueError("no training rows for the n-gram baseline")
        x = self._tfidf.fit_transform(self._hasher.transform(docs))
        def fit(y):
            return LogisticRegression(C=10.0, max_iter=3000, class_weight="balanced",
                                      random_state=self.seed).fit(x, y)

        if len(np.unique(labels)) > 1:
            self._command = fit(labels)
        else:
            self._only_class = int(labels[0])
        mal = (np.asarray(malicious) > 0.5).astype(int)
        if len(np.unique(mal)) > 1:
            self._malicious = fit(mal)
        else:
            self._only_malicious = float(mal[0])
        log.info("ngram_baseline_fitted", rows=len(docs), classes=len(self.classes))
        return self

    def predict(self, docs: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """``command_probs`` ``(n, n_classes)`` and ``malicious`` ``(n,)``."""
        n = len(docs)
        probs = np.zeros((n, len(self.classes)), np.float32)
        mal = np.zeros(n, np.float32)
        if n == 0:
            return probs, mal
        x = self._tfidf.transform(self._hasher.transform(docs))
        if self._command is not None:
            probs[:, self._command.classes_] = self._command.predict_proba(x)
        else:
            probs[:, self._only_class or 0] = 1.0
        if self._malicious is not None:
            mal[:] = self._malicious.predict_proba(x)[:, 1]
        else:
            mal[:] = self._only_malicious or 0.0
        return probs, mal
