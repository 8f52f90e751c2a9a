"""Redaction of secrets and hostile characters in command lines and paths.

Everything here came from a monitored process, so it may carry passwords in
argv, tokens in URLs, escape sequences meant for a responder's terminal, or
megabytes of padding. Alerts and log lines only ever get the output of
``clean_cmdline`` / ``clean_text``.

Each rule below marks character spans of the original text as secret; the
spans are merged and each becomes ``***``, so rules never see each other's
output. What the rules mask is listed in ``docs/alerts.md``.

NOTE: every pattern is linear in the input: no quantifier nests another over
the same characters, and open-ended key patterns are anchored at word starts
by a look-behind, so hostile megabyte lines cost one pass each.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_CMDLINE_CHARS = 1024
MASK = "***"

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

Span = tuple[int, int]

# -- patterns that apply anywhere -------------------------------------------

_PEM_RE = re.compile(
    r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----.*?"
    r"(?:-----END [A-Z ]{0,40}PRIVATE KEY-----|\Z)",
    re.S,
)
# Well-known token shapes; group 1 is the secret part.
_TOKEN_RE = re.compile(
    r"(?<![A-Za-z0-9_-])("
    r"(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|gl(?:pat|dt|rt|ptt|ft|cbt|soat)-[A-Za-z0-9_-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|xapp-[A-Za-z0-9-]{10,}"
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}"
    r"|whsec_[A-Za-z0-9]{16,}"
    r"|AIza[0-9A-Za-z_-]{30,}"
    r"|sk-[A-Za-z0-9_-]{20,}"
    r"|npm_[A-Za-z0-9]{30,}"
    r"|pypi-[A-Za-z0-9_-]{40,}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
    r")"
)
_BEARER_RE = re.compile(r"(?i)(?<![A-Za-z0-9_-])bearer[ \t]+([A-Za-z0-9._~+/=-]+)")
# A scheme followed by ://, at the start of a word.
_SCHEME_RE = re.compile(r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,30}://")
_URL_TAIL_RE = re.compile(r"""[^\s"'<>]*""")
_PORT_RE = re.compile(r"[0-9]*")
# Query or fragment parameters: ?name=value, &name=value, #name=value.
_PARAM_RE = re.compile(r"""[?&#]([^=&#?\s"']+)=([^&#\s"']*)""")
_SECRET_PARAM_RE = re.compile(
    r"(?i)key|token|secret|pass|pwd|auth|credential|signature|cookie|session"
    r"|(?:^|[^a-z])sig(?:[^a-z]|$)"
)

# A key name holding a secret word, at the start of a word; the rest of the
# word is taken by _WORD_TAIL_RE. Not after / ? & # @ (paths, URLs, params).
_KEY_RE = re.compile(
    r"(?i)(?<![\w.\-/?&#%@])[\w.\-]*?"
    r"(?:key|token|secret|pass|pwd|auth|credential|cookie)"
)
_WORD_TAIL_RE = re.compile(r"[\w.\-]*")
_COLON_SEP_RE = re.compile(r"""["']?[ \t]*:[ \t]*""")
_EQ_SEP_RE = re.compile(r"""["']?=""")
_FLAG_SEP_RE = re.compile(r"""["']?\s+""")
_AUTH_SCHEME_RE = re.compile(
    r"(?i)(?:bearer|basic|digest|token|negotiate|ntlm|bot|apikey|aws4-hmac-sha256)"
    r"[ \t]+"
)
# A shell word: unquoted characters, escapes and closed quoted strings.
_QUOTED_RE = re.compile(r"""(?:"(?:[^"\\]|\\.)*"|'[^']*')""", re.S)
_VALUE_RE = re.compile(r"""(?:[^\s"'\\]|\\.|"(?:[^"\\]|\\.)*"|'[^']*')+""", re.S)
_EXEMPT_KEYS = frozenset({"pwd", "oldpwd"})
_EXEMPT_KEY_RE = re.compile(
    r"(?i)(?:^no[-_]|^ask|(?:file|files|path|dir|store|stdin|fd|env|prompt|type|size|"
    r"len|length|bits|alg|form|format|name|mode|method|url|uri|out)$)"
)
_PLAIN_VALUES = frozenset(
    {"yes", "no", "true", "false", "on", "off", "none", "null", "0", "1", MASK}
)
# openssl-style pass phrase sources: only pass:X carries the secret itself.
_PASS_SOURCE_RE = re.compile(r"(?i)(?:env|file|fd|stdin)(?::|$)")

_WORDS_RE = re.compile(r"\S+")


def _unquoted(text: str, start: int, end: int, exempt: bool) -> Span | None:
    """The part of a value to mask, inside its quotes, or None if harmless.

    With ``exempt``, flag-like values (``no``, ``true``) and openssl pass
    phrase sources other than ``pass:`` (``env:NAME``, ``file:PATH``) stay.
    """
    value = text[start:end]
    if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
        start, end, value = start + 1, end - 1, value[1:-1]
    if exempt:
        if value.lower() in _PLAIN_VALUES or _PASS_SOURCE_RE.match(value):
            return None
        if value[:5].lower() == "pass:":
            start += 5
    return (start, end) if start < end else None


def _value_at(text: str, pos: int, exempt: bool = True) -> tuple[Span | None, int]:
    """The secret value starting at ``pos`` and where the value ends."""
    if pos >= len(text):
        return None, pos
    m = _QUOTED_RE.match(text, pos) or _VALUE_RE.match(text, pos)
    if m is None:
        if text[pos] in "\"'" and pos + 1 < len(text):
            # An unclosed quote: the value may run past the cut, mask it all.
            return (pos + 1, len(text)), len(text)
        return None, pos
    return _unquoted(text, pos, m.end(), exempt), m.end()


def _value_span(text: str, pos: int, exempt: bool = True) -> Span | None:
    """The secret value starting at ``pos``, or None if there is none."""
    return _value_at(text, pos, exempt)[0]


def _url_spans(text: str) -> Iterator[Span]:
    """User info of ``scheme://user:password@host`` URLs."""
    end = last_at = -1
    for m in _SCHEME_RE.finditer(text):
        start = m.end()
        if start > end:
            # A new word; schemes inside one (?next=https://...) share its
            # end and last @, so each character is scanned once.
            end = _URL_TAIL_RE.match(text, start).end()  # type: ignore[union-attr]
            last_at = text.rfind("@", start, end)
        at = last_at
        if at < start:
            continue
        authority_end = end
        for stop in "/?#":
            i = text.find(stop, start, authority_end)
            if i >= 0:
                authority_end = i
        if at >= authority_end and not _password_with_slash(text, start, authority_end):
            continue  # an @ in the path (/@scope/pkg): no user info
        colon = text.find(":", start, at)
        yield (colon + 1 if colon >= 0 else start, at)


def _password_with_slash(text: str, start: int, authority_end: int) -> bool:
    """Whether ``user:pa/ss@host`` was cut at a slash inside the password."""
    colon = text.rfind(":", start, authority_end)
    if colon < 0:
        return False
    port = _PORT_RE.match(text, colon + 1).end()  # type: ignore[union-attr]
    return port != authority_end or port == colon + 1


def _param_spans(text: str) -> Iterator[Span]:
    """Values of query parameters named like a signature, token or key."""
    for m in _PARAM_RE.finditer(text):
        if m.group(2) and _SECRET_PARAM_RE.search(m.group(1)):
            yield m.span(2)


def _key_spans(text: str) -> Iterator[Span]:
    """Values after key names holding a secret word.

    ``KEY=value``, ``key: value``, ``"key":"value"``, ``--flag value``;
    ``Authorization: Bearer x`` keeps its scheme word.
    """
    scanned = 0
    for m in _KEY_RE.finditer(text):
        key_start = m.start()
        if key_start < scanned:
            continue  # a key inside the value of the previous one
        key_end = _WORD_TAIL_RE.match(text, m.end()).end()  # type: ignore[union-attr]
        key = text[key_start:key_end].lstrip("-")
        if key.lower() in _EXEMPT_KEYS or _EXEMPT_KEY_RE.search(key):
            continue
        sep = _EQ_SEP_RE.match(text, key_end) or _COLON_SEP_RE.match(text, key_end)
        if sep is None and text.startswith("-", key_start):
            sep = _FLAG_SEP_RE.match(text, key_end)
            if sep is not None and text.startswith("-", sep.end()):
                continue  # the next argument is another flag
        if sep is None:
            continue
        pos = sep.end()
        scheme = _AUTH_SCHEME_RE.match(text, pos)
        if scheme is not None:
            pos = scheme.end()
        span, scanned = _value_at(text, pos)
        if span is not None:
            yield span


# -- program-specific arguments ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tool:
    """How one program takes secrets in its arguments.

    Attributes:
        glued: short options whose secret must be attached (``mysql -pX``).
        secret: short options whose argument, attached or next, is secret.
        userpass: short options taking ``user<sep>password``.
        sep: the separator in ``userpass`` values.
        takes_arg: other short options with an argument.
        words: whole-word options whose next argument is secret (``-k``).
        long_userpass: long options taking ``user<sep>password``.
        clusters: short options combine getopt-style (``-sSu u:p``).
        positional: index of the secret among positionals, for ``htpasswd -b``.
        subcommand: the rules apply only after this word (``docker login``).
        wraps: the first positional is a command to run (``sshpass``).
    """

    glued: str = ""
    secret: str = ""
    userpass: str = ""
    sep: str = ":"
    takes_arg: str = ""
    words: frozenset[str] = frozenset()
    long_userpass: frozenset[str] = frozenset()
    clusters: bool = True
    positional: bool = False
    subcommand: str = ""
    wraps: bool = False


_MYSQL = _Tool(glued="p", takes_arg="hPuDeS")
_CURL = _Tool(
    userpass="uU",
    takes_arg="AbcCdDeEFHKmoPQrtTwxXYyz",
    long_userpass=frozenset({"--user", "--proxy-user"}),
)
_SMB = _Tool(
    userpass="U", sep="%", takes_arg="sOnRWIpdlDmAtTc",
    long_userpass=frozenset({"--user"}),
)
_LDAP = _Tool(secret="w", takes_arg="bDhHpsfSTyYeEoRUXzlLaNcMOPQ")
_ARCHIVE = _Tool(glued="p", clusters=False)
_LOGIN = _Tool(secret="p", takes_arg="u", subcommand="login")
_TOOLS: dict[str, _Tool] = {
    **dict.fromkeys(
        ["mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlshow", "mysqlcheck",
         "mysqlpump", "mysqlslap", "mysqlbinlog", "mysqlsh", "mysql_upgrade",
         "mariadb", "mariadb-dump", "mariadb-admin", "mariadb-import", "mariadb-show",
         "mariadb-check", "mariadb-slap", "mariadb-binlog", "mariadb-upgrade"],
        _MYSQL,
    ),
    "sshpass": _Tool(secret="p", takes_arg="fdP", wraps=True),
    "redis-cli": _Tool(words=frozenset({"-a", "--pass"}), clusters=False),
    "htpasswd": _Tool(takes_arg="Cr", positional=True),
    "openssl": _Tool(
        words=frozenset({"-k", "-K", "-pass", "-passin", "-passout", "-password"}),
        clusters=False,
    ),
    **dict.fromkeys(["curl", "curl.exe"], _CURL),
    **dict.fromkeys(
        ["http", "https", "httpie", "xh", "xhs"],
        _Tool(userpass="a", long_userpass=frozenset({"--auth"})),
    ),
    "lftp": _Tool(userpass="u", sep=",", takes_arg="cefp"),
    **dict.fromkeys(["smbclient", "rpcclient", "smbcacls", "smbget", "smbmap"], _SMB),
    **dict.fromkeys(
        ["ldapsearch", "ldapadd", "ldapmodify", "ldapdelete", "ldapwhoami",
         "ldapcompare", "ldapmodrdn", "ldapexop"],
        _LDAP,
    ),
    "ldappasswd": _Tool(secret="was", takes_arg="bDhHpfSTyYeEoRUXzlLNcMOPQ"),
    **dict.fromkeys(
        ["mongo", "mongosh", "mongodump", "mongorestore", "mongoexport",
         "mongoimport", "mongostat", "mongotop", "mongofiles"],
        _Tool(secret="p", takes_arg="uhdc", clusters=False),
    ),
    **dict.fromkeys(["sqlcmd", "bcp", "osql"], _Tool(secret="P", clusters=False)),
    **dict.fromkeys(["zip", "zipcloak", "unzip"], _Tool(secret="P", takes_arg="bdnt")),
    **dict.fromkeys(["7z", "7za", "7zr", "7zz", "rar", "unrar"], _ARCHIVE),
    **dict.fromkeys(
        ["mosquitto_pub", "mosquitto_sub", "mosquitto_rr"],
        _Tool(secret="P", takes_arg="hpuitmfqkLATVDF", clusters=False),
    ),
    "rdesktop": _Tool(secret="p", takes_arg="udgaknsc"),
    **dict.fromkeys(
        ["docker", "podman", "nerdctl", "buildah", "skopeo", "helm", "oras"], _LOGIN
    ),
}
_MYSQL_NAME_RE = re.compile(r"(?:mysql|mariadb)[a-z_-]{0,16}")

#: Programs that run the command that follows their options: name to the
#: short options taking an argument and how many positionals come first.
_WRAPPERS: dict[str, tuple[str, int]] = {
    "sudo": ("ugCDhprtUT", 0),
    "doas": ("uC", 0),
    "env": ("uCS", 0),
    "nohup": ("", 0),
    "exec": ("a", 0),
    "command": ("", 0),
    "builtin": ("", 0),
    "time": ("fo", 0),
    "nice": ("n", 0),
    "ionice": ("cnpP", 0),
    "timeout": ("sk", 1),
    "stdbuf": ("ioe", 0),
    "setsid": ("", 0),
    "chroot": ("", 1),
    "flock": ("wEc", 1),
    "taskset": ("", 0),
    "chrt": ("", 1),
    "unshare": ("", 0),
    "nsenter": ("tSGnmuipUCTrw", 0),
    "runuser": ("ugGcls", 0),
    "xargs": ("aEIdLlnPs", 0),
    "watch": ("nd", 0),
    "strace": ("abeEIoOpPsSuUX", 0),
    "ltrace": ("aeEnopsuxX", 0),
    "ssh": ("BbcDEeFIiJLlmOopQRSWw", 1),
    "proxychains": ("f", 0),
    "proxychains4": ("f", 0),
    "torsocks": ("aPuip", 0),
    "!": ("", 0),
    "then": ("", 0),
    "do": ("", 0),
    "else": ("", 0),
    "if": ("", 0),
    "while": ("", 0),
    "until": ("", 0),
}
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "busybox"})
# Programs whose later arguments may be a whole command: `docker exec c mysql`.
_REMOTE = frozenset({"docker", "podman", "nerdctl", "kubectl", "oc", "crictl"})
_SEPARATORS = frozenset({";", "&&", "||", "|", "&", "|&", "(", ")", "{", "}", "\\;"})
_EXEC_WORDS = frozenset({"-exec", "-execdir", "-ok", "-okdir", "--"})
_LEAD_RE = re.compile(r"""^(?:\$\(|[`'"(])*""")
_ENV_ASSIGN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _program(word: str) -> str:
    """The program name a command word runs: basename, quotes stripped."""
    word = _LEAD_RE.sub("", word).rstrip("'\";)`")
    return word.rsplit("/", 1)[-1]


def _tool(name: str) -> _Tool | None:
    """The argument rules of program ``name``, if it takes secrets."""
    tool = _TOOLS.get(name)
    if tool is None and _MYSQL_NAME_RE.fullmatch(name):
        tool = _MYSQL
    return tool


class _Words:
    """The words of a command line with their offsets in the text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.spans = [m.span() for m in _WORDS_RE.finditer(text)]

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> str:
        start, end = self.spans[i]
        return self.text[start:end]

    def ends_command(self, i: int) -> bool:
        """Whether word ``i`` ends a command (``;``, ``&&``, ``x;``)."""
        word = self[i]
        return word in _SEPARATORS or word.endswith((";", "&", "|", ")"))

    def arg(self, i: int, exempt: bool = False) -> Span | None:
        """The secret part of the argument starting at word ``i``."""
        if i >= len(self):
            return None
        return _value_span(self.text, self.spans[i][0], exempt)

    def rest(self, i: int, offset: int, sep: str = "") -> Span | None:
        """The secret part of word ``i`` from character ``offset`` on.

        With ``sep``, only what follows its first occurrence is secret
        (``user:password``); without one in the value nothing is.
        """
        if i >= len(self):
            return None
        value = _value_span(self.text, self.spans[i][0] + offset, exempt=False)
        if value is None or not sep:
            return value
        cut = self.text.find(sep, value[0], value[1])
        return (cut + 1, value[1]) if 0 <= cut < value[1] - 1 else None


def _program_spans(text: str) -> list[Span]:
    """Program-specific secret arguments (``mysql -pX``, ``sshpass -p X``).

    A program is known by the basename of the word at a command position:
    the first word, the word after ``;``, ``&&``, ``|``, ``--`` or find's
    ``-exec``, the script of ``sh -c``, and the command run by a wrapper
    (``sudo``, ``env``, ``timeout``, ``ssh host`` ...).
    """
    words = _Words(text)
    spans: list[Span] = []
    i = 0
    expect_command = True
    while i < len(words):
        word = words[i]
        if words.ends_command(i) or word in _EXEC_WORDS:
            expect_command = True
            i += 1
            continue
        if not expect_command:
            i += 1
            continue
        expect_command = False
        if _ENV_ASSIGN_RE.match(_LEAD_RE.sub("", word)):
            expect_command = True  # VAR=value before the command
            i += 1
            continue
        name = _program(word)
        if name in _REMOTE and _subcommand(words, i + 1) != "login":
            i = _remote_command(words, i + 1, spans)
        elif (tool := _tool(name)) is not None:
            i = _tool_args(words, i, tool, spans)
            expect_command = tool.wraps
        elif name in _SHELLS:
            i = _shell_command(words, i)
            expect_command = True
        elif name in _WRAPPERS:
            i = _skip_options(words, i + 1, *_WRAPPERS[name])
            expect_command = True
        else:
            i += 1
    return spans


def _subcommand(words: _Words, i: int) -> str:
    """The first word from ``i`` on that is not an option."""
    while i < len(words) and not words.ends_command(i):
        if not words[i].startswith("-"):
            return words[i]
        i += 1
    return ""


def _skip_options(words: _Words, i: int, takes_arg: str, positionals: int) -> int:
    """Index of the command after a wrapper's options and positionals."""
    while i < len(words) and not words.ends_command(i):
        word = words[i]
        if word == "--":
            return i + 1
        if word.startswith("-") and len(word) > 1:
            if not word.startswith("--") and word[-1] in takes_arg:
                i += 1  # the option's argument is the next word
        elif not _ENV_ASSIGN_RE.match(word):
            if positionals <= 0:
                return i
            positionals -= 1
        i += 1
    return i


def _shell_command(words: _Words, i: int) -> int:
    """Index of the script a shell runs with ``-c``, or past the options."""
    i += 1
    while i < len(words) and words[i].startswith("-") and len(words[i]) > 1:
        if not words[i].startswith("--") and "c" in words[i]:
            return i + 1
        i += 1
    return i


def _remote_command(words: _Words, i: int, spans: list[Span]) -> int:
    """Find the tool in ``docker exec c mysql -pX``-like lines and mask its args.

    The tool is a word with a known name not right after an option, so
    ``docker run --name mysql -p 80:80 web`` is left alone.
    """
    while i < len(words) and not words.ends_command(i):
        tool = _tool(_program(words[i]))
        previous = words[i - 1]
        if tool is not None and (not previous.startswith("-") or previous == "--"):
            return _tool_args(words, i, tool, spans)
        i += 1
    return i


def _tool_args(words: _Words, i: int, tool: _Tool, spans: list[Span]) -> int:
    """Mask the secret arguments of ``tool`` run at word ``i``; return the end."""
    i += 1
    if tool.subcommand:
        while i < len(words) and not words.ends_command(i):
            if words[i] == tool.subcommand:
                break
            i += 1
        i += 1
    positionals: list[int] = []
    letters_seen: set[str] = set()
    while i < len(words) and not words.ends_command(i):
        word = words[i].lstrip("'\"")
        lead = len(words[i]) - len(word)
        head, eq, _ = word.partition("=")
        if word in tool.words:
            _add(spans, words.arg(i + 1, exempt=True))
            i += 2
            continue
        if head in tool.long_userpass:
            if eq:
                _add(spans, words.rest(i, lead + len(head) + 1, tool.sep))
            else:
                i += 1
                _add(spans, words.rest(i, 0, tool.sep))
            i += 1
            continue
        if not word.startswith("-") or word == "-":
            if tool.wraps:
                return i  # the wrapped command
            positionals.append(i)
            i += 1
            continue
        if word.startswith("--"):
            i += 1
            continue
        letters = word[1:] if tool.clusters else word[1]
        for k, letter in enumerate(letters):
            letters_seen.add(letter)
            offset = lead + 2 + k
            attached = offset < len(words[i])
            if letter in tool.glued:
                if attached:
                    _add(spans, words.rest(i, offset))
                break
            if letter in tool.secret or letter in tool.userpass:
                sep = tool.sep if letter in tool.userpass else ""
                if attached:
                    _add(spans, words.rest(i, offset, sep))
                else:
                    i += 1
                    _add(spans, words.rest(i, 0, sep))
                break
            if letter in tool.takes_arg:
                i += 0 if attached else 1
                break
        i += 1
    if tool.positional and "b" in letters_seen:
        # htpasswd -b file user password; with -n there is no file.
        want = 1 if "n" in letters_seen else 2
        if len(positionals) > want:
            _add(spans, words.arg(positionals[want]))
    return i


def _add(spans: list[Span], span: Span | None) -> None:
    if span is not None:
        spans.append(span)


# -- entry points ------------------------------------------------------------


def _secret_spans(text: str) -> list[Span]:
    """Every span of ``text`` any rule marks as secret, unsorted."""
    spans = [m.span() for m in _PEM_RE.finditer(text)]
    spans += [m.span(1) for m in _TOKEN_RE.finditer(text)]
    spans += [m.span(1) for m in _BEARER_RE.finditer(text)]
    spans += _url_spans(text)
    spans += _param_spans(text)
    spans += _key_spans(text)
    spans += _program_spans(text)
    return spans


def _mask(text: str, spans: list[Span]) -> str:
    """``text`` with each run of overlapping spans replaced by ``MASK``."""
    out: list[str] = []
    pos = 0
    for start, end in sorted(s for s in spans if s[0] < s[1]):
        if end <= pos:
            continue
        start = max(start, pos)
        if start > pos or not out:
            out.append(text[pos:start])
            out.append(MASK)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def clean_text(text: str, max_chars: int = 256) -> str:
    """Strip control and bidi characters and cap the length of untrusted text."""
    if not isinstance(text, str):
        text = str(text)
    text = _CONTROL_RE.sub("?", text[: max_chars * 4])
    if len(text) > max_chars:
        text = text[:max_chars] + f"...[{len(text) - max_chars} more]"
    return text


def redact(text: str) -> str:
    """Mask secrets (passwords, tokens, keys, credentials in URLs) in text.

    Args:
        text: a command line, path, URL or message from a monitored process.

    Returns:
        ``text`` with each secret replaced by ``***``; everything else,
        including harmless URLs and file names, is kept as it was.
    """
    if not isinstance(text, str):
        text = str(text)
    spans = _secret_spans(text)
    return _mask(text, spans) if spans else text


def clean_cmdline(cmdline: str, max_chars: int = MAX_CMDLINE_CHARS) -> str:
    """A command line safe to put in an alert: redacted, printable, truncated.

    Args:
        cmdline: the process's command line, arguments joined by spaces.
        max_chars: length of the result before the ``...[N more]`` note.

    Returns:
        The redacted command line, control characters replaced by spaces.
    """
    if not isinstance(cmdline, str):
        cmdline = str(cmdline)
    text = _CONTROL_RE.sub(" ", cmdline[: max_chars * 4])
    if len(cmdline) > max_chars * 4:
        # The last word was cut: a secret in it may have lost what marks it
        # (the @ of a URL, a closing quote), so it goes whole.
        text = text[: text.rfind(" ") + 1] + MASK
    # Redact before truncating so a secret cut in half is still masked.
    return clean_text(redact(text), max_chars)
