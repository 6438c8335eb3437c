"""A private ``redis-server`` that speaks TLS only, checks client certificates, and lets in ACL users
alone: ``admin`` (everything) and one user limited to the keys and channels of one key prefix."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import TracebackType

import pytest
import redis

from zombieguard.demo.embedded import find_redis_server, free_port, terminate

PASSWORD = "p@ss/w0rd:zg"
"""The limited user's password: characters a URL has to quote."""
ADMIN_PASSWORD = "admin-pw"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory: Path) -> None:
    """A certificate authority, and a server and a client certificate it signed (``ca``, ``server``
    and ``client`` ``.crt``/``.key`` in ``directory``)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the TLS test certificates")
    ca, ca_key = str(directory / "ca.crt"), str(directory / "ca.key")
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=zombieguard-test-ca"),
        *("-keyout", ca_key, "-out", ca),
    )
    (directory / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        key, request = str(directory / f"{name}.key"), str(directory / f"{name}.csr")
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", request
        )
        _openssl(
            *("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2"),
            *("-extfile", str(directory / "san.cnf"), "-out", str(directory / f"{name}.crt")),
        )


class SecureRedis:
    """The server, for the key prefix ``prefix``: :attr:`url` is the limited user's, :attr:`admin`
    a client of the admin's."""

    def __init__(self, prefix: str, certificates: Path) -> None:
        self.prefix = prefix
        self.certificates = certificates
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="zombieguard-tls-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    def tls_query(self) -> str:
        """The TLS options of a URL: the CA, and the client's certificate and key."""
        c = self.certificates
        return f"ssl_ca_certs={c / 'ca.crt'}&ssl_certfile={c / 'client.crt'}&ssl_keyfile={c / 'client.key'}"

    @property
    def url(self) -> str:
        """The limited user's URL, its password quoted."""
        secret = urllib.parse.quote(PASSWORD, safe="")
        return f"rediss://zg:{secret}@127.0.0.1:{self.port}/0?{self.tls_query()}"

    def client(self, user: str = "admin", password: str = ADMIN_PASSWORD) -> redis.Redis:
        """A client of ``user``'s."""
        c = self.certificates
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=user,
            password=password,
            ssl=True,
            ssl_ca_certs=str(c / "ca.crt"),
            ssl_certfile=str(c / "client.crt"),
            ssl_keyfile=str(c / "client.key"),
        )

    def start(self) -> SecureRedis:
        """Start the server and wait until the admin's client is answered."""
        c = self.certificates
        config = Path(self._dir.name) / "redis.conf"
        pattern = "{" + self.prefix + "}*"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    "port 0",
                    f"tls-port {self.port}",
                    f"tls-cert-file {c / 'server.crt'}",
                    f"tls-key-file {c / 'server.key'}",
                    f"tls-ca-cert-file {c / 'ca.crt'}",
                    "tls-auth-clients yes",
                    'save ""',
                    f"dir {self._dir.name}",
                    "user default off",
                    f"user admin on >{ADMIN_PASSWORD} ~* &* +@all",
                    f"user zg on >{PASSWORD} ~{pattern} &{pattern} +@all",
                ]
            )
            + "\n"
        )
        log = Path(self._dir.name) / "redis.log"
        with log.open("wb") as output:
            self._process = subprocess.Popen(
                [find_redis_server(), str(config)], stdout=output, stderr=subprocess.STDOUT
            )
        admin = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                said = log.read_text(errors="replace") if self._process.poll() is not None else ""
                if "Bad directive" in said and "tls-port" in said:  # built without TLS
                    self.close()
                    pytest.skip("this redis-server is built without TLS")
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.close()
                    raise
                time.sleep(0.05)
        admin.close()
        return self

    def denied(self) -> list[str]:
        """What the ACL refused the limited user (``ACL LOG``)."""
        with contextlib.closing(self.client()) as admin:
            entries = admin.acl_log()
        return [
            f"{e.get('reason')} {e.get('object')} ({e.get('context')})"
            for e in entries
            if e["username"] == "zg"
        ]

    def close(self) -> None:
        """Stop the server and remove its directory."""
        if self._process is not None:
            terminate(self._process)
            self._process = None
        self._dir.cleanup()

    def __enter__(self) -> SecureRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
