"""Redaction of command lines: secrets masked, evidence kept, hostile input."""

from __future__ import annotations

import types

import pytest
import structlog

from systerns.core.redact import MASK, clean_cmdline, redact

# (line, secrets that must not appear, evidence that must survive)
CASES = [
    # URL user info, also with a slash in the password.
    ("find /usr/share/doc -name '*.gz' -o -path 'https://admin:S3cr/et@db.example/x'",
     ["S3cr", "et@db"], ["-name '*.gz'", "-path 'https://admin:", "@db.example/x'"]),
    ("psql postgresql://app:PgPw0rd@db:5432/app", ["PgPw0rd"], ["@db:5432/app"]),
    ("git clone https://ghp_abcdefghijklmnopqrstuvwxyz012345@github.com/o/r",
     ["ghp_abcdefghijklmnopqrstuvwxyz012345"], ["@github.com/o/r"]),
    ("redis-cli -u redis://default:RedisUrlPw@cache:6379",
     ["RedisUrlPw"], ["@cache:6379"]),
    # Values after key names: =, :, JSON, quoted, long flags.
    ("find / -path 'X-Api-Key: SECRETAPIKEY1' -print",
     ["SECRETAPIKEY1"], ["find / -path 'X-Api-Key: ", "' -print"]),
    ("env MYSQL_PWD=hunter2 mysqldump db", ["hunter2"], ["MYSQL_PWD=", "mysqldump db"]),
    ("""curl -d '{"password":"JsonPw9"}' https://api.example/login""",
     ["JsonPw9"], ['{"password":"', "https://api.example/login"]),
    ("""echo '{"token": "JsonTok9", "user": "bob"}'""",
     ["JsonTok9"], ['"user": "bob"']),
    ("app --password 'my secret phrase' --verbose",
     ["my", "secret", "phrase"], ["--password '", "' --verbose"]),
    ("app --password=hunter2pw --port 80", ["hunter2pw"], ["--port 80"]),
    ("app --password hunter2pw --port 80", ["hunter2pw"], ["--port 80"]),
    ("curl -H 'Authorization: Bearer BearerTok9' https://x.example/",
     ["BearerTok9"], ["Authorization: Bearer ", "https://x.example/"]),
    ("git -c http.extraHeader='Authorization: Basic QmFzaWNQdzk=' fetch",
     ["QmFzaWNQdzk="], ["fetch"]),
    ("java -Djavax.net.ssl.keyStorePassword=JksPw9 -jar app.jar",
     ["JksPw9"], ["-jar app.jar"]),
    ("kubectl create secret generic db --from-literal=password=KubePw9",
     ["KubePw9"], ["create secret generic db"]),
    ("keytool -storepass StorePw9 -keystore app.jks",
     ["StorePw9"], ["-keystore app.jks"]),
    ("""sh -c "curl -H 'X-Api-Key: ShellKey9' https://x.example" """,
     ["ShellKey9"], ["https://x.example"]),
    ("curl -H 'Cookie: sid=CookieVal9' https://x.example/",
     ["CookieVal9"], ["https://"]),
    # curl/wget-like -u user:password: the password goes, the URL stays.
    ("curl -u admin:hunter2pass https://x.example/a",
     ["hunter2pass"], ["-u admin:", "https://x.example/a"]),
    ("curl -sSu admin:hunter2pass https://x.example/a", ["hunter2pass"], ["admin:"]),
    ("curl --user=admin:hunter2pass https://x.example/a", ["hunter2pass"], ["admin:"]),
    ("curl -x http://proxy:3128 -U puser:ProxyPw9 https://x",
     ["ProxyPw9"], ["http://proxy:3128"]),
    ("wget --user=bob --password=WgetPw9 https://x.example/f.tar.gz",
     ["WgetPw9"], ["--user=bob", "https://x.example/f.tar.gz"]),
    ("http -a bob:HttpiePw9 example.org", ["HttpiePw9"], ["bob:"]),
    ("lftp -u bob,LftpPw9 ftp.example", ["LftpPw9"], ["bob,", "ftp.example"]),
    # Program-specific password flags.
    ("sshpass -p hunter2pass ssh root@host", ["hunter2pass"], ["ssh root@host"]),
    ("nohup sshpass -pGluedPw9 ssh root@host", ["GluedPw9"], ["ssh root@host"]),
    ("redis-cli -h cache -p 6379 -a RedisPw9", ["RedisPw9"], ["-h cache -p 6379"]),
    ("htpasswd -b /etc/nginx/.htpasswd alice HtPw9", ["HtPw9"], [".htpasswd alice"]),
    ("htpasswd -nbB alice HtPw9", ["HtPw9"], ["alice"]),
    ("openssl enc -aes-256-cbc -k OsslPw9 -in a -out b", ["OsslPw9"], ["-in a -out b"]),
    ("openssl enc -pass pass:OsslPw9 -in a", ["OsslPw9"], ["-pass pass:", "-in a"]),
    ("mysql -u root -pMyPw9 shop", ["MyPw9"], ["-u root -p", "shop"]),
    ("mysql --password=MyPw9 shop", ["MyPw9"], ["shop"]),
    ("mysqldump -uroot -p'My Pw9' shop", ["My Pw9"], ["shop"]),
    ("mariadb -h dbprod -pMyPw9", ["MyPw9"], ["-h dbprod"]),
    ("smbclient //fs/share -U admin%SmbPw9", ["SmbPw9"], ["//fs/share", "admin%"]),
    ("ldapsearch -x -D cn=admin -w LdapPw9 -b dc=example",
     ["LdapPw9"], ["-b dc=example"]),
    ("sqlcmd -S db -U sa -P SqlPw9", ["SqlPw9"], ["-U sa"]),
    ("unzip -P ZipPw9 a.zip", ["ZipPw9"], ["a.zip"]),
    ("7z x -pSevenPw9 a.7z", ["SevenPw9"], ["a.7z"]),
    ("docker login -u me -p DockerPw9 registry.example", ["DockerPw9"], ["-u me"]),
    # ... also after sh -c, wrappers, separators and remote exec.
    ("sh -c 'cd /srv; mysql -u root -pMyPw9 shop'", ["MyPw9"], ["cd /srv;"]),
    ("bash -lc mysql -pMyPw9", ["MyPw9"], ["bash -lc mysql -p"]),
    ("sudo -u root mysql -pMyPw9", ["MyPw9"], ["sudo -u root"]),
    ("env -i HOME=/root timeout 10 mysql -pMyPw9", ["MyPw9"], ["HOME=/root"]),
    ("xargs -n1 mysql -pMyPw9", ["MyPw9"], ["xargs -n1"]),
    ("ssh -p 2222 db mysql -pMyPw9", ["MyPw9"], ["-p 2222 db"]),
    ("docker exec -it db mysql -pMyPw9", ["MyPw9"], ["exec -it db"]),
    ("kubectl exec db-0 -- mysql -pMyPw9", ["MyPw9"], ["db-0 --"]),
    ("find /srv -name '*.sql' -exec mysql -pMyPw9 shop ;",
     ["MyPw9"], ["-name '*.sql'"]),
    # Known token shapes anywhere.
    ("x glpat-abcdefghijklmnopqrst12", ["glpat-abcdefghijklmnopqrst12"], []),
    ("x sk_live_4eC39HqLyjWDarjtT1zdp7dc", ["sk_live_4eC39HqLyjWDarjtT1zdp7dc"], []),
    ("x sk_test_4eC39HqLyjWDarjtT1zdp7dc", ["sk_test_4eC39HqLyjWDarjtT1zdp7dc"], []),
    ("x AIzaSyA1234567890abcdefghijklmnopqrstu",
     ["AIzaSyA1234567890abcdefghijklmnopqrstu"], []),
    ("x github_pat_11ABCDEFG0123456789_abcdefghijklmn",
     ["github_pat_11ABCDEFG0123456789_abcdefghijklmn"], []),
    ("x gho_abcdefghijklmnopqrstuvwxyz ghs_abcdefghijklmnopqrstuvwxyz",
     ["gho_abcdefghijklmnopqrstuvwxyz", "ghs_abcdefghijklmnopqrstuvwxyz"], []),
    ("x xoxb-1234567890-abcdefghij xoxp-1234567890-abcdefghij",
     ["xoxb-1234567890-abcdefghij", "xoxp-1234567890-abcdefghij"], []),
    ("x AKIAABCDEFGHIJKLMNOP", ["AKIAABCDEFGHIJKLMNOP"], []),
    ("x eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
     ["eyJhbGciOiJIUzI1NiJ9", "eyJzdWIiOiIxIn0", "c2lnbmF0dXJl"], []),
    ("app token=0123456789abcdef0123456789abcdef", ["0123456789abcdef"], ["token="]),
    # Query parameters named like a signature, credential, token or key.
    ("curl 'https://s3.example/b/k?X-Amz-Signature=SigVal9&X-Amz-Credential=CredVal9"
     "&X-Amz-Date=20260101'",
     ["SigVal9", "CredVal9"], ["https://s3.example/b/k?", "X-Amz-Date=20260101"]),
    ("wget 'https://x.example/a?b=1&token=TokVal9&c=2#sig=SigVal9'",
     ["TokVal9", "SigVal9"], ["?b=1&", "&c=2"]),
    ("curl 'https://blob.example/c?sv=2022&sig=SasSig9&se=2030'",
     ["SasSig9"], ["sv=2022", "se=2030"]),
    # Private keys.
    ("echo -----BEGIN RSA PRIVATE KEY----- MIIEpQIBAAKCAQEA"
     " -----END RSA PRIVATE KEY-----",
     ["MIIEpQIBAAKCAQEA"], ["echo"]),
]

# Lines with no secret: redaction must give them back unchanged.
HARMLESS = [
    "find / -perm 644 -path /x -print -prune",
    "find /var/lib/mysql -perm -4000 -print",
    "find . -name mysql -perm 644 -print0",
    "find /usr/share/doc -name '*.gz' -o -path '*/examples/*'",
    "ls -p /tmp",
    "wget https://example.org/releases/file-1.2.tar.gz",
    "curl -fsSL https://api.example/v1/items?page=2&sort=asc",
    "npm i https://registry.npmjs.org/@babel/core",
    "curl http://localhost:8080/@scope/pkg",
    "docker run --name mysql -p 3306:3306 mysql:8",
    "ssh -o PasswordAuthentication=no deploy@host",
    "app --auth=none --password-file /run/secrets/db",
    "env PWD=/home/app OLDPWD=/ ./run",
    "echo password reset requested",
    "cat /etc/ssl/private/key.pem /tmp/token.txt",
    "ssh-keygen -t ed25519 -f /root/.ssh/id_ed25519",
    "openssl req -new -keyout key.pem -out req.csr",
    "docker login --password-stdin registry.example",
    "python3 -m http.server 8000",
    "openssl rsa -passin env:KEY_PW -in k.pem",
]


@pytest.mark.parametrize(("line", "secrets", "evidence"), CASES)
def test_secrets_are_masked_and_evidence_kept(line, secrets, evidence):
    """Every secret of the red-team's cases goes; the evidence around stays."""
    out = redact(line)

    assert MASK in out
    for secret in secrets:
        assert secret not in out, out
    for kept in evidence:
        assert kept in out, out


@pytest.mark.parametrize(("line", "secrets", "evidence"), CASES)
def test_alert_command_line_is_masked_too(line, secrets, evidence):
    """``clean_cmdline`` (what alerts carry) masks the same secrets."""
    out = clean_cmdline(line)

    for secret in secrets:
        assert secret not in out, out


@pytest.mark.parametrize(("line", "secrets", "evidence"), CASES)
def test_redaction_is_idempotent(line, secrets, evidence):
    """Redacting twice (an alert line logged again) changes nothing more."""
    once = redact(line)

    assert redact(once) == once


@pytest.mark.parametrize("line", HARMLESS)
def test_harmless_lines_are_unchanged(line):
    """No over-masking: find's -path/-perm/-print, plain URLs, file names."""
    assert redact(line) == line
    assert clean_cmdline(line) == line


@pytest.mark.parametrize(("line", "expected"), [
    ("find /usr/share/doc -name '*.gz' -o -path 'https://admin:S3cr/et@db.example/x'",
     "find /usr/share/doc -name '*.gz' -o -path 'https://admin:***@db.example/x'"),
    ("curl -u admin:hunter2pass https://x", "curl -u admin:*** https://x"),
    ("app --password 'my secret phrase' x", "app --password '***' x"),
    ("sshpass -p hunter2pass ssh root@host", "sshpass -p *** ssh root@host"),
    ("mysql -pPW -e 'show tables'", "mysql -p*** -e 'show tables'"),
    ("""{"password":"PW"}""", """{"password":"***"}"""),
    ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
])
def test_exact_output(line, expected):
    """Only the secret itself becomes ``***``; quotes and user names stay."""
    assert redact(line) == expected


def test_control_characters_and_invalid_utf8_around_secrets():
    """Escapes become spaces before redaction; lone surrogates are just text."""
    out = clean_cmdline("run\x1b[31m --password=ab\udcffcd\x00 --token\tTokVal9")

    assert "\x1b" not in out and "\x00" not in out
    assert "ab\udcffcd" not in out and "cd" not in out.split("--password=")[1][:8]
    assert "TokVal9" not in out


def test_secret_cut_by_the_length_cap_is_masked_whole():
    """A word cut where the line is capped loses its @ or quote: it goes."""
    line = "x https://user:" + "S" * 5000 + "@host/"

    out = clean_cmdline(line, max_chars=1024)

    assert "S" * 8 not in out
    assert out.startswith("x ")


HOSTILE = {
    "plain": "a" * (1 << 20),
    "schemes": "a://" * (1 << 18),
    "schemes_with_at": "a://b:" * (1 << 17) + "@",
    "keys_chained": "token=" * (1 << 17),
    "flags": "--token " * (1 << 17),
    "params": "&key=" * (1 << 18),
    "double_quotes": 'password="\\"' * (1 << 16),
    "single_quotes": "password='" * (1 << 16),
    "escapes": 'password=a"' + '\\"' * (1 << 19),
    "jwt_prefix": "eyJ" + "a" * (1 << 20),
    "jwt_dots": "eyJaaaa." * (1 << 17),
    "pem": "-----BEGIN RSA PRIVATE KEY-----" * (1 << 15),
    "tools": "mysql -pX " * (1 << 17),
    "shells": "sh -c " * (1 << 17),
    "wrappers": "sudo -u " * (1 << 17),
    "remote": "docker exec " * (1 << 16),
    "colons": "key:" * (1 << 18),
    "spaces": " " * (1 << 20),
    "controls": "\x00\x1b" * (1 << 19),
    "surrogates": "\ud800" * (1 << 20),
    "at_signs": "@" * (1 << 20),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_megabyte_hostile_lines(name):
    """One-megabyte lines built to make a backtracking pattern blow up.

    No time is asserted: every pattern is linear (see ``core/redact.py``), so
    these finish in well under a second; a quadratic one would hang the run.
    """
    line = HOSTILE[name] + " --password=Zq9TailSecret"

    out = redact(line)
    alert = clean_cmdline(line)

    assert "Zq9TailSecret" not in out
    assert isinstance(alert, str) and len(alert) <= 1024 + len("...[9999999 more]")


def test_publish_interrupted_log_is_redacted():
    """The collector's interrupted-publish log line masks the traced command."""
    from systerns.producers.publisher import Publisher

    fake = types.SimpleNamespace(
        stopping=types.SimpleNamespace(is_set=lambda: True),
        send=lambda item: None,
        dead_letter=lambda *a, **k: None,
    )
    with structlog.testing.capture_logs() as logs:
        Publisher.publish(fake, [object()], source="mysql -u root -pLogPw9 shop")

    assert [e["event"] for e in logs] == ["publish_interrupted"]
    assert "LogPw9" not in logs[0]["source"]
    assert logs[0]["source"] == "mysql -u root -p*** shop"


def test_collect_trace_source_is_redacted(monkeypatch, tmp_path):
    """``collect --trace`` passes the command, redacted, as the source."""
    from systerns.cli import collect
    from systerns.producers import trace
    from systerns.producers.publisher import PublishStats

    sources = []

    class FakePublisher:
        def __init__(self, settings):
            self.stopping = None

        def install_signal_handlers(self):
            pass

        def replay_spool(self):
            pass

        def publish(self, items, *, source):
            sources.append(source)

        def close(self):
            return PublishStats()

    monkeypatch.setattr(collect, "Publisher", FakePublisher)
    monkeypatch.setattr(trace, "trace_command", lambda cmd, **kw: iter(()))
    monkeypatch.setenv("SYSTERNS_OUTAGE_POLICY", "block")

    rc = collect.main(["--trace", "--host", "h", "--trace-dir", str(tmp_path), "--",
                       "curl", "-u", "admin:CollectPw9", "https://x.example/"])

    assert rc == 0
    assert sources == ["curl -u admin:*** https://x.example/"]
