"""Where a Redis is and how to reach it: one server, a Sentinel service or a Cluster, with TLS and
an ACL user (docs/deployment.md).

A :class:`RedisTarget` is read from a URL or from a redis-py client and builds clients. It travels to
the processes a worker starts as JSON, through a pipe or their environment, never their command
line: it carries the password. :meth:`RedisTarget.describe` is the form to show anyone.

The URLs understood::

    redis://[[user]:password@]host[:port][/db][?option=value...]
    rediss://...                                       (TLS)
    unix://[[user]:password@]/path/to/redis.sock[?db=N&...]
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db][?...]
    rediss+sentinel://...                              (TLS to the sentinels and the primary)
    redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0][?...]
    rediss+cluster://...                               (TLS)

The user and password are the data nodes' (the primary's); ``sentinel_username`` and
``sentinel_password`` options authenticate to the sentinels. Options are redis-py's connection
options: ``socket_timeout``, ``socket_connect_timeout``, ``health_check_interval``, and with TLS
``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_ca_data``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_password``,
``ssl_cert_reqs`` (``required``, ``optional``, ``none``) and ``ssl_check_hostname``.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster
import redis.sentinel

from zombieguard.errors import ConfigurationError
from zombieguard.policy import flag

SERVER, SENTINEL, CLUSTER = "server", "sentinel", "cluster"
_KINDS = {
    "redis": (SERVER, False),
    "rediss": (SERVER, True),
    "unix": (SERVER, False),
    "redis+sentinel": (SENTINEL, False),
    "rediss+sentinel": (SENTINEL, True),
    "redis+cluster": (CLUSTER, False),
    "rediss+cluster": (CLUSTER, True),
}
_DEFAULT_PORT = {SERVER: 6379, SENTINEL: 26379, CLUSTER: 6379}


def _cert_reqs(value: str) -> str:
    if value.lower() not in {"required", "optional", "none"}:
        raise ValueError(value)
    return value.lower()


# The options a URL may carry, and how each is read from its text.
_OPTIONS: dict[str, Callable[[str], Any]] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "health_check_interval": int,
    "client_name": str,
    "sentinel_username": str,
    "sentinel_password": str,
}
_TLS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_ca_data": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": flag,
}
_SENTINEL_AUTH = ("sentinel_username", "sentinel_password")
_SECRETS = ("password", "ssl_password", "sentinel_password")


def _plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


@dataclass(frozen=True)
class RedisTarget:
    """How to reach one Redis deployment: ``kind`` is ``server``, ``sentinel`` or ``cluster``."""

    kind: str = SERVER
    nodes: tuple[tuple[str, int], ...] = (("localhost", 6379),)
    """The server, the sentinels, or a Cluster's nodes to discover it from."""
    path: str = ""
    """A server's Unix socket (then ``nodes`` is unused)."""
    service: str = ""
    """The Sentinel service's name (``master_name``)."""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """redis-py connection options (see the module's docstring), ``sentinel_*`` ones included."""

    # -- reading ---------------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, source: str = "redis_url") -> RedisTarget:
        """The target ``url`` names; a malformed URL is a :class:`ConfigurationError` naming
        ``source`` and what is wrong (the password is never repeated)."""
        try:
            return cls._parse(url)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"{source}={masked(url)!r} is invalid: {exc}. Expected e.g. redis://localhost:6379/0, "
                "rediss://user:password@host:6380/0?ssl_ca_certs=/path/ca.pem or "
                "redis+sentinel://host:26379,host:26380/mymaster/0 or redis+cluster://host:7000,host:7001"
            ) from None

    @classmethod
    def _parse(cls, url: str) -> RedisTarget:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in _KINDS:
            raise ValueError(f"the scheme must be one of {', '.join(sorted(_KINDS))}")
        kind, tls = _KINDS[scheme.lower()]
        rest, _, query = rest.partition("?")
        netloc, slash, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = urllib.parse.unquote(user) or None
            password = urllib.parse.unquote(secret) if colon else None
        options = cls._options(query, kind, tls)
        db: int | None = options.pop("db", None)
        if scheme.lower() == "unix":
            if hosts:
                raise ValueError("a unix URL has no host: unix:///path/to/redis.sock")
            if not path:
                raise ValueError("the socket's path is missing")
            return cls(SERVER, (), "/" + path, "", db or 0, username, password, False, options)
        nodes = tuple(cls._node(h, kind) for h in hosts.split(",")) if hosts else ()
        if not nodes:
            raise ValueError("the host is missing")
        segments = [s for s in path.split("/") if s] if slash else []
        service = ""
        if kind == SENTINEL:
            if not segments:
                raise ValueError("the Sentinel service's name is missing (…/service_name[/db])")
            service = urllib.parse.unquote(segments.pop(0))
        elif len(nodes) > 1 and kind != CLUSTER:
            raise ValueError("one host only (several are for redis+sentinel:// and redis+cluster://)")
        db = cls._db(segments, path, db)
        if kind == CLUSTER and db:
            raise ValueError("a Redis Cluster has database 0 only")
        return cls(kind, nodes, "", service, db, username, password, tls, options)

    @staticmethod
    def _db(segments: list[str], path: str, given: int | None) -> int:
        """The database a URL's path (what is left of it once a service's name is read) names."""
        if len(segments) > 1:
            raise ValueError(f"the path {'/' + path!r} has more parts than a database number")
        if segments:
            if not segments[0].isdigit():
                raise ValueError(f"the database {segments[0]!r} is not a number")
            return int(segments[0])
        return given or 0

    @staticmethod
    def _options(query: str, kind: str, tls: bool) -> dict[str, Any]:
        """The options of a URL's query, read (``db`` among them, for a Unix socket's URL)."""
        options: dict[str, Any] = {}
        for name, values in urllib.parse.parse_qs(query, keep_blank_values=True).items():
            reader = int if name == "db" else _OPTIONS.get(name) or (_TLS_OPTIONS.get(name) if tls else None)
            if reader is None:
                why = "needs TLS (a rediss scheme)" if name in _TLS_OPTIONS else "is not an option known here"
                raise ValueError(f"option {name!r} {why}")
            if name in _SENTINEL_AUTH and kind != SENTINEL:
                raise ValueError(f"option {name!r} is for a Sentinel URL only")
            try:
                options[name] = reader(values[-1])
            except ValueError:
                raise ValueError(f"option {name}={values[-1]!r} is not valid") from None
        return options

    @staticmethod
    def _node(text: str, kind: str) -> tuple[str, int]:
        host, port = text, ""
        if text.startswith("["):  # an IPv6 address
            host, _, port = text[1:].partition("]")
            port = port.removeprefix(":")
        elif ":" in text:
            host, _, port = text.rpartition(":")
        if not host:
            raise ValueError(f"the host is missing in {text!r}")
        if port and not port.isdigit():
            raise ValueError(f"the port {port!r} is not a number")
        return host, int(port) if port else _DEFAULT_PORT[kind]

    @classmethod
    def from_client(cls, client: Any) -> RedisTarget:
        """The target a redis-py client reaches: a plain, TLS or Unix-socket connection, or a
        Sentinel-managed one (its sentinels and service). Options that are not plain values (a
        credential provider, a retry object) are not carried."""
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        tls = issubclass(pool.connection_class, redis.SSLConnection)
        manager = getattr(pool, "sentinel_manager", None)
        db = int(kwargs.get("db") or 0)
        auth = (kwargs.get("username"), kwargs.get("password"))
        options = cls._carried(kwargs, tls)
        if isinstance(manager, redis.sentinel.Sentinel):
            nodes = []
            for sentinel in manager.sentinels:
                at = sentinel.connection_pool.connection_kwargs
                nodes.append((str(at.get("host", "localhost")), int(at.get("port", 26379))))
            for name in _SENTINEL_AUTH:
                value = (manager.sentinel_kwargs or {}).get(name.removeprefix("sentinel_"))
                if value is not None:
                    options[name] = value
            return cls(SENTINEL, tuple(nodes), "", str(pool.service_name), db, *auth, tls, options)
        if "path" in kwargs:
            return cls(SERVER, (), str(kwargs["path"]), "", db, *auth, False, options)
        node = (str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)))
        return cls(SERVER, (node,), "", "", db, *auth, tls, options)

    @staticmethod
    def _carried(kwargs: Mapping[str, Any], tls: bool) -> dict[str, Any]:
        known = {**_OPTIONS, **(_TLS_OPTIONS if tls else {})}
        return {k: v for k, v in kwargs.items() if k in known and v is not None and _plain(v)}

    @classmethod
    def from_json(cls, text: str) -> RedisTarget:
        """The target :meth:`to_json` wrote."""
        data = json.loads(text)
        data["nodes"] = tuple((str(h), int(p)) for h, p in data.get("nodes", ()))
        return cls(**data)

    # -- writing ---------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The whole target, secrets included: for a pipe or a child's environment, never argv."""
        return json.dumps(
            {
                "kind": self.kind,
                "nodes": [list(n) for n in self.nodes],
                "path": self.path,
                "service": self.service,
                "db": self.db,
                "username": self.username,
                "password": self.password,
                "tls": self.tls,
                "options": dict(self.options),
            }
        )

    def describe(self) -> str:
        """The target as a URL without its secrets, to show in logs, status and errors."""
        scheme = {SERVER: "redis", SENTINEL: "redis+sentinel", CLUSTER: "redis+cluster"}[self.kind]
        if self.tls:
            scheme = scheme.replace("redis", "rediss", 1)
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':***' if self.password else ''}@"
        if self.path:
            return f"unix://{auth}{self.path}?db={self.db}"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        path = {SENTINEL: f"/{self.service}/{self.db}", CLUSTER: ""}.get(self.kind, f"/{self.db}")
        return f"{scheme}://{auth}{hosts}{path}"

    # -- connecting ------------------------------------------------------------------------------
    def client(self, **extra: Any) -> Any:
        """A new redis-py client on its own connection pool (``extra``: further connection options,
        e.g. ``health_check_interval``): ``redis.Redis`` for a server or a Sentinel service's
        current primary, ``redis.cluster.RedisCluster`` for a Cluster."""
        options: dict[str, Any] = {k: v for k, v in self.options.items() if k not in _SENTINEL_AUTH}
        options.update(extra, username=self.username, password=self.password)
        if self.tls:
            options["ssl"] = True
        if self.kind == SENTINEL:
            # The sentinels: the same socket and TLS options, their own user and password.
            own = {k: v for k, v in options.items() if k.startswith(("socket_", "ssl")) or k == "client_name"}
            for name in _SENTINEL_AUTH:
                if name in self.options:
                    own[name.removeprefix("sentinel_")] = self.options[name]
            manager = redis.sentinel.Sentinel(list(self.nodes), sentinel_kwargs=own, db=self.db, **options)
            return manager.master_for(self.service)
        if self.kind == CLUSTER:
            startup = [redis.cluster.ClusterNode(host, port) for host, port in self.nodes]  # type: ignore[no-untyped-call]
            return redis.cluster.RedisCluster(startup_nodes=startup, **options)
        options["db"] = self.db
        if self.path:
            options.update(connection_class=redis.UnixDomainSocketConnection, path=self.path)
        else:
            options.pop("ssl", None)  # the connection class says it
            host, port = self.nodes[0]
            kind = redis.SSLConnection if self.tls else redis.Connection
            options.update(connection_class=kind, host=host, port=port)
        return redis.Redis(connection_pool=redis.ConnectionPool(**options))


PRIMARY_MAX_AGE = 1.0
"""How stale, at most, a worker's presence connection's idea of the node serving our keys is (its
sweeper asks at each sweep, a seated presence watcher before each look)."""
FAILOVER_NOTICED = 2.0
"""Seconds by which the sentinels name a new primary after promoting it (about one, measured)."""
_asked: weakref.WeakKeyDictionary[Any, tuple[float, tuple[str, int]]] = weakref.WeakKeyDictionary()


def sentinel_managed(client: Any) -> bool:
    """Whether ``client`` reaches a Sentinel service's primary."""
    return isinstance(getattr(client, "connection_pool", None), redis.sentinel.SentinelConnectionPool)


def primary_of(client: Any, max_age: float = 0.0) -> tuple[str, int] | None:
    """The primary the sentinels name, for a client of a Sentinel service (None for any other),
    asked again unless this process asked for the same pool less than ``max_age`` seconds ago.
    Asking also closes the pool's idle connections to a former primary, so that its next command
    reaches the new one: a former primary that is still up keeps taking writes until Sentinel
    makes it a replica, seconds after a failover, and nothing else moves a connection off it."""
    if not sentinel_managed(client):
        return None
    pool = client.connection_pool
    now = time.monotonic()
    last = _asked.get(pool)
    if last is not None and now - last[0] < max_age:
        return last[1]
    address: Any = pool.get_master_address()
    primary = str(address[0]), int(address[1])
    _asked[pool] = (now, primary)
    return primary


def failed_over(
    client: Any, primary: tuple[str, int] | None, wait: Callable[[float], object] = time.sleep
) -> tuple[str, int] | None:
    """No replica acknowledged a write made on ``primary`` (a Sentinel service's): it may have been
    failed over a moment before, the sentinels not naming the new primary yet. Ask them again once
    they could (``wait``, for :data:`FAILOVER_NOTICED` seconds): the new primary, where the write
    must be made again (it goes with the former's data when Sentinel demotes it), or None when
    they still name ``primary`` (its replicas are only slow or down: the write stands)."""
    wait(FAILOVER_NOTICED)
    now = primary_of(client)
    return None if now == primary else now


def cluster_managed(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster's."""
    return isinstance(client, redis.cluster.RedisCluster)


def serving_node(client: Any, key: str, max_age: float = 0.0) -> tuple[str, int] | None:
    """The node that serves ``key`` where that can change under a worker, asked again unless this
    process asked for the same client less than ``max_age`` seconds ago: a Sentinel service's
    primary (:func:`primary_of`), or a Cluster's primary for ``key``'s slot, found after a read of
    ``key`` so that a slot moved since is followed (the former owner answers MOVED, and redis-py
    learns the new one). None for one server."""
    if not cluster_managed(client):
        return primary_of(client, max_age)
    now = time.monotonic()
    last = _asked.get(client)
    if last is not None and now - last[0] < max_age:
        return last[1]
    client.exists(key)
    node = client.get_node_from_key(key)
    serving = str(node.host), int(node.port)
    _asked[client] = (now, serving)
    return serving


def masked(url: str) -> str:
    """``url`` as it may be shown: the password of its user info, and secret options, ``***``."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    for secret in _SECRETS:
        if f"{secret}=" in tail:
            head, _, after = tail.partition(f"{secret}=")
            tail = f"{head}{secret}=***{after[after.find('&') :] if '&' in after else ''}"
    return f"{scheme}{sep}{netloc}{slash}{tail}"
