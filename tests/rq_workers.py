"""RQ worker classes that end-to-end tests start (``rq worker -w``) to inject a fault of their own."""

from __future__ import annotations

from typing import Any

import redis

from zombieguard.integrations.rq import GuardedSimpleWorker, GuardedWorker


def _kill_clients(worker: Any) -> None:
    """``CLIENT KILL TYPE normal`` on the worker's (private) Redis: every client's connection is
    closed, as a proxy restart or a failover closes them."""
    kwargs = worker.connection.connection_pool.connection_kwargs
    killer = redis.Redis(host=kwargs["host"], port=kwargs["port"])
    killer.client_kill_filter(_type="normal", skipme=True)
    killer.close()


class ClientKilledInPreparation(GuardedWorker):
    """Every client of its Redis is disconnected as RQ prepares each job (in the horse)."""

    def prepare_job_execution(self, job: Any, *args: Any, **kwargs: Any) -> None:
        """Disconnect every client, then prepare."""
        _kill_clients(self)
        super().prepare_job_execution(job, *args, **kwargs)


class SimpleClientKilledInPreparation(GuardedSimpleWorker):
    """The same, for the worker that runs jobs in its own process."""

    def prepare_job_execution(self, job: Any, *args: Any, **kwargs: Any) -> None:
        """Disconnect every client, then prepare."""
        _kill_clients(self)
        super().prepare_job_execution(job, *args, **kwargs)
