"""A Redis Cluster of the test's own on loopback: three primaries (``redis-server --cluster-enabled
yes``), the slots split between them, whose slots the test can move from node to node as a
resharding does (``CLUSTER SETSLOT ... IMPORTING/MIGRATING``, ``MIGRATE``, ``SETSLOT ... NODE``)."""

from __future__ import annotations

import contextlib
import functools
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from tests.support.waiting import wait_until
from zombieguard.demo.embedded import find_redis_server, free_port, terminate

SLOTS = 16384
BUS_OFFSET = 10000
"""A node's cluster bus listens on its port plus this."""


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def node_port() -> int:
    """A free port whose cluster bus port is free too."""
    while True:
        port = free_port()
        if port + BUS_OFFSET < 65536 and _bindable(port + BUS_OFFSET):
            return port


class ClusterDeployment:
    """Three primaries, no replicas, each serving a third of the slots."""

    def __init__(self) -> None:
        self.binary = find_redis_server()
        self.ports = [node_port(), node_port(), node_port()]
        self._dir = tempfile.TemporaryDirectory(prefix="zombieguard-cluster-")
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The cluster as zombieguard's URL (two of its nodes to discover it from)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def node(self, port: int) -> redis.Redis:
        """A client of one node (the caller closes it)."""
        return redis.Redis(port=port, socket_timeout=5)

    def _call(self, port: int, *args: Any) -> Any:
        with contextlib.closing(self.node(port)) as client:
            return client.execute_command(*args)

    def node_id(self, port: int) -> str:
        """The node's cluster id."""
        return str(self._call(port, "CLUSTER", "MYID"), "ascii")

    def owner(self, slot: int) -> int:
        """The port of the primary that serves ``slot`` (as the first node sees it)."""
        for start, end, primary in self._slots(self.ports[0]):
            if start <= slot <= end:
                return primary
        raise RuntimeError(f"slot {slot} is served by no node")

    def slot_of(self, key: str) -> int:
        """The slot of ``key``."""
        return int(self._call(self.ports[0], "CLUSTER", "KEYSLOT", key))

    def start(self) -> ClusterDeployment:
        """Start the nodes, give each its slots, have them meet; wait until all agree."""
        base = Path(self._dir.name)
        for port in self.ports:
            (base / str(port)).mkdir()
            self._processes.append(
                subprocess.Popen(
                    [
                        self.binary,
                        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                        *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                        *("--cluster-node-timeout", "5000", "--dir", str(base / str(port))),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            wait_until(
                functools.partial(self._call, port, "PING"),
                10,
                interval=0.05,
                what=f"node {port} up",
                ignore=(redis.RedisError,),
            )
        share = SLOTS // len(self.ports)
        for i, port in enumerate(self.ports):
            end = SLOTS - 1 if i == len(self.ports) - 1 else (i + 1) * share - 1
            self._call(port, "CLUSTER", "ADDSLOTSRANGE", i * share, end)
        for port in self.ports[1:]:
            self._call(port, "CLUSTER", "MEET", "127.0.0.1", self.ports[0])
        wait_until(
            self._agreed,
            20,
            interval=0.05,
            what="the nodes agreeing on the slots",
            ignore=(redis.RedisError,),
        )
        return self

    def _slots(self, port: int) -> list[tuple[int, int, int]]:
        """The slot ranges one node knows, with the port of the primary of each."""
        raw = self._call(port, "CLUSTER", "SLOTS")
        return sorted((int(start), int(end), int(primary[1])) for start, end, primary, *_ in raw)

    def _agreed(self) -> bool:
        for port in self.ports:
            text = self._call(port, "CLUSTER", "INFO").decode()
            fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
            if fields.get("cluster_state") != "ok" or fields.get("cluster_known_nodes") != str(
                len(self.ports)
            ):
                return False
        views = [self._slots(port) for port in self.ports]
        return all(view == views[0] for view in views)

    def begin_move(self, slot: int, to: int) -> int:
        """Start moving ``slot`` to the node on port ``to`` (as ``redis-cli --cluster reshard`` does):
        the target imports it, the owner migrates it. The former owner's port."""
        source = self.owner(slot)
        self._call(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        self._call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(to))
        return source

    def migrate_keys(self, slot: int, source: int, to: int, limit: int | None = None) -> int:
        """Move up to ``limit`` (all, by default) of ``slot``'s keys from ``source`` to ``to``; how many."""
        moved = 0
        while limit is None or moved < limit:
            batch = 10 if limit is None else min(10, limit - moved)
            keys = self._call(source, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            self._call(source, "MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        return moved

    def finish_move(self, slot: int, to: int) -> None:
        """Give ``slot`` to the node on port ``to`` on every node (its keys all migrated)."""
        target = self.node_id(to)
        for port in [to, *(p for p in self.ports if p != to)]:
            self._call(port, "CLUSTER", "SETSLOT", slot, "NODE", target)
        wait_until(
            lambda: self.owner(slot) == to,
            10,
            interval=0.05,
            what=f"slot {slot} served by {to}",
            ignore=(redis.RedisError,),
        )

    def move_slot(self, slot: int, to: int) -> None:
        """Move ``slot`` and its keys to the node on port ``to`` at once."""
        source = self.begin_move(slot, to)
        self.migrate_keys(slot, source, to)
        self.finish_move(slot, to)

    def close(self) -> None:
        """Stop every node and remove the directory."""
        for process in self._processes:
            terminate(process)
        self._processes.clear()
        self._dir.cleanup()

    def __enter__(self) -> ClusterDeployment:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
