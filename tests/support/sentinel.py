"""A Redis Sentinel deployment of the test's own on loopback: a primary, a replica and three
sentinels (``redis-server --sentinel``), which the test can fail over."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tests.support.waiting import wait_until
from zombieguard.demo.embedded import find_redis_server, free_port, terminate

SERVICE = "zgprimary"


class SentinelDeployment:
    """Two data nodes and three sentinels watching them as :data:`SERVICE` (quorum 2)."""

    def __init__(self) -> None:
        self.binary = find_redis_server()
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port(), free_port(), free_port()]
        self._dir = tempfile.TemporaryDirectory(prefix="zombieguard-sentinel-")
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The deployment as zombieguard's URL (database 0)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    @property
    def instances(self) -> list[tuple[str, int]]:
        """The sentinels, as RQ's ``SENTINEL["INSTANCES"]`` and redis-py take them."""
        return [("127.0.0.1", p) for p in self.sentinel_ports]

    def client(self) -> redis.Redis:
        """A client of the current primary, found through the sentinels."""
        # Sentinel demotes a former primary seconds after a failover, closing its clients'
        # connections: a command that meets that is sent again, on the primary named then.
        retry = Retry(ExponentialBackoff(cap=0.5), 5)
        client: redis.Redis = redis.sentinel.Sentinel(self.instances, socket_timeout=2).master_for(
            SERVICE, socket_timeout=2, retry=retry, retry_on_error=[redis.ConnectionError]
        )
        return client

    def primary_port(self, sentinel: int = 0) -> int:
        """The port of the primary a sentinel (the first by default) names."""
        with contextlib.closing(redis.Redis(port=self.sentinel_ports[sentinel], socket_timeout=1)) as client:
            address: Any = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(address[1])

    def _start(self, *args: str) -> None:
        self._processes.append(
            subprocess.Popen([self.binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    def start(self) -> SentinelDeployment:
        """Start the primary and its replica, then the sentinels; wait until they all agree."""
        base = Path(self._dir.name)
        primary, replica = self.data_ports
        for port in self.data_ports:
            (base / str(port)).mkdir()
            extra = ["--replicaof", "127.0.0.1", str(primary)] if port == replica else []
            self._start(
                *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                *("--dir", str(base / str(port)), *extra),
            )
        wait_until(
            lambda: redis.Redis(port=replica).info("replication").get("master_link_status") == "up",
            15,
            interval=0.05,
            what="the replica in sync",
            ignore=(redis.RedisError,),
        )
        for port in self.sentinel_ports:
            config = base / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {base}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 4000\n"
            )
            self._start(str(config), "--sentinel")
        self._wait_agreed(primary)
        return self

    def ready_for_failover(self) -> bool:
        """Whether the sentinels agree on the primary and its replica is in sync, now."""
        try:
            return self._agreed(self.primary_port())
        except redis.RedisError:
            return False

    def _agreed(self, primary: int) -> bool:
        """Every sentinel names ``primary``, knows the other node as its replica (in sync) and the
        other sentinels (they find each other through the primary, every 2 s)."""
        for port in self.sentinel_ports:
            sentinel = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
            with contextlib.closing(sentinel):
                if self.primary_port(self.sentinel_ports.index(port)) != primary:
                    return False
                replicas: Any = sentinel.sentinel_slaves(SERVICE)
                if not replicas or any("down" in r["flags"] or "disconnect" in r["flags"] for r in replicas):
                    return False
                others: Any = sentinel.sentinel_sentinels(SERVICE)
                if len(others) < len(self.sentinel_ports) - 1:
                    return False
        replica = next(p for p in self.data_ports if p != primary)
        with contextlib.closing(redis.Redis(port=replica, socket_timeout=1)) as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    def _wait_agreed(self, primary: int) -> None:
        wait_until(
            lambda: self._agreed(primary),
            40,
            interval=0.05,
            what=f"the sentinels agreed on the primary at {primary}",
            ignore=(redis.RedisError,),
        )

    def failover_started(self) -> tuple[int, int]:
        """Send ``SENTINEL FAILOVER`` (the replica is to become the primary) and return at once:
        the old primary's port and the new one's."""
        old = self.primary_port()
        self._wait_agreed(old)  # the other node is a replica in sync (a former primary takes ~15 s)
        new = next(p for p in self.data_ports if p != old)
        sentinel = redis.Redis(port=self.sentinel_ports[0], socket_timeout=2)
        with contextlib.closing(sentinel):
            sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        return old, new

    def failover(self) -> int:
        """``SENTINEL FAILOVER``, and wait until every sentinel names the new primary (the former
        one is made its replica some seconds later). Returns the new primary's port."""
        _, new = self.failover_started()

        def named() -> bool:
            return all(self.primary_port(i) == new for i in range(len(self.sentinel_ports)))

        wait_until(
            named,
            15,
            interval=0.05,
            what=f"every sentinel naming the new primary at {new}",
            ignore=(redis.RedisError,),
        )
        return new

    def stop_replica(self) -> None:
        """Stop the node that is not the primary (the sentinels leave the primary in place: the
        replica is not what they watch for)."""
        replica = next(p for p in self.data_ports if p != self.primary_port())
        with (
            contextlib.closing(redis.Redis(port=replica, socket_timeout=2)) as client,
            contextlib.suppress(redis.ConnectionError),
        ):
            client.shutdown(nosave=True)

    def close(self) -> None:
        """Stop every process and remove the directory."""
        for process in self._processes:
            terminate(process)
        self._processes.clear()
        self._dir.cleanup()

    def __enter__(self) -> SentinelDeployment:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
