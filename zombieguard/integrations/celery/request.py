"""The worker main process's view of one task message (Celery's ``Request``, guarded): Celery's own
time limits as a backstop, and a dead pool process's task settled as zombieguard judges it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery import signals, states
from celery.app.task import Task
from celery.exceptions import TimeLimitExceeded

from zombieguard.containment import contained, log
from zombieguard.integrations.celery import internals
from zombieguard.integrations.celery.process import this_process
from zombieguard.leases import Outcome
from zombieguard.worker.lifecycle import BACKSTOP_SECONDS


class GuardedRequestMixin:
    """The worker main process's view of one task message, guarded."""

    _zg_limits: Any = None
    _zg_timed_out = False

    if TYPE_CHECKING:
        id: str
        task: Task
        args: Any
        kwargs: Any
        store_errors: bool
        worker_pid: int | None

        def acknowledge(self) -> None: ...
        def reject(self, requeue: bool = False) -> Any: ...
        def send_event(self, type: str, **fields: Any) -> None: ...

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        """Celery's; the worker notes that this message's task started here (see :class:`ReceivedLog`)."""
        super().on_accepted(pid, time_accepted)  # type: ignore[misc]
        runtime = this_process.runtime
        if runtime is not None and runtime.received is not None:
            runtime.received.start(self)

    @property
    def time_limits(self) -> Any:
        """Celery's own time limits, moved past the policy's: the prefork pool's timer is a backstop."""
        hard, soft = self._zg_limits or (None, None)
        runtime = this_process.runtime
        if runtime is None or runtime.pool != "prefork":
            return (hard, soft)
        try:
            policy = runtime.policy(self.task, self._zg_limits)
        except Exception:  # an invalid policy: the task runs unguarded, under Celery's own limits
            return (hard, soft)
        if policy.hard_timeout is not None:
            hard = int(policy.hard_timeout) + 1 + BACKSTOP_SECONDS
        if policy.soft_timeout is not None:
            soft = int(policy.soft_timeout) + 1 + BACKSTOP_SECONDS
        return (hard, soft)

    @time_limits.setter
    def time_limits(self, value: Any) -> None:
        self._zg_limits = value

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """Celery's, once per task for the hard limit (whoever noticed it first); nothing for an
        attempt that no longer holds the task (its worker was frozen past its lease, say): a
        superseded attempt never writes the task's state."""
        if not soft:
            if self._zg_timed_out or self._zg_stalled_frozen() or self._zg_superseded(timeout):
                return
            self._zg_timed_out = True
            self._zg_log_stacks(timeout)
        super().on_timeout(soft, timeout)  # type: ignore[misc]

    def _zg_log_stacks(self, limit: object) -> None:
        """Celery's hard limit passed before zombieguard's own stopped the task (its limits are set
        past zombieguard's): log where the pool process is, before Celery kills it."""
        runtime, pid = this_process.runtime, self.worker_pid
        if runtime is None or runtime.monitor is None or not pid:
            return
        stacks = None
        with contained(f"celery task {self.id}: stacks at Celery's hard limit"):
            stacks = runtime.monitor.stacks(pid)
        log.error(
            "celery task %s[%s]: Celery's own hard time limit (%s) passed; pool process %d was at:\n%s",
            self.task.name,
            self.id,
            limit,
            pid,
            stacks or "(no stacks came)",
        )

    def _zg_stalled_frozen(self) -> bool:
        """Celery's hard time limit passed while the whole worker was frozen past the task's lease
        (a paused VM): a stall, as the prefork monitor judges it (the task is recovered, this attempt
        records nothing), whichever of the two notices first. True when handled so."""
        runtime = this_process.runtime
        if runtime is None or runtime.monitor is None or not runtime.monitor.woke_past_lease(self.id):
            return False
        verdict = None
        with contained(f"celery task {self.id}: frozen past its lease"):
            verdict = runtime.monitor.deaths.verdict(self, terminated=False)
        if verdict not in (Outcome.STALLED, Outcome.LEASE_LOST):
            return False
        self._zg_timed_out = True  # settled: Celery's other report of the limit records nothing
        internals.task_ready(self)
        self.acknowledge()
        return True

    def _zg_superseded(self, limit: object) -> bool:
        """Celery's hard time limit passed: when this attempt no longer holds the task (its worker
        was frozen past its lease, say), the request is done with, its message acked, nothing is
        recorded, and True."""
        runtime = this_process.runtime
        if runtime is None or runtime.monitor is None or not runtime.monitor.deaths.superseded(self.id):
            return False
        log.warning(
            "celery task %s[%s]: Celery's hard time limit (%s) passed for an attempt that no longer "
            "holds the task; nothing recorded",
            self.task.name,
            self.id,
            limit,
        )
        self._zg_timed_out = True
        internals.task_ready(self)
        self.acknowledge()
        return True

    def zg_timed_out(self, limit: float) -> None:
        """Record the task as past its hard limit, once, as Celery 5.7 records a prefork hard timeout:
        FAILURE with ``TimeLimitExceeded``, ``on_failure``, ``after_return``, ``task_failure``, the
        ``task-failed`` event, then the ack (Celery before 5.7 runs none of the hooks itself)."""
        if self._zg_timed_out:
            return
        self._zg_timed_out = True
        task = self.task
        internals.task_ready(self)
        log.error("Hard time limit (%ss) exceeded for %s[%s]", limit, task.name, self.id)
        exc = TimeLimitExceeded(limit)
        task.backend.mark_as_failure(
            self.id, exc, request=internals.request_context(self), store_result=self.store_errors
        )
        try:
            raise exc
        except TimeLimitExceeded:
            einfo = ExceptionInfo()
        with contained(f"on_failure of celery task {self.id}"):
            task.on_failure(exc, self.id, self.args, self.kwargs, einfo)
            if internals.has_custom_after_return(task):
                task.after_return(states.FAILURE, exc, self.id, self.args, self.kwargs, None)
        signals.task_failure.send(
            sender=task,
            task_id=self.id,
            exception=exc,
            args=self.args,
            kwargs=self.kwargs,
            traceback=einfo.tb,
            einfo=einfo,
        )
        self.send_event("task-failed", exception=repr(exc), traceback=einfo.traceback)
        if task.acks_late:
            if getattr(task, "acks_on_timeout", task.acks_on_failure_or_timeout):
                self.acknowledge()
            else:
                self.reject(requeue=True)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        """Celery's, except where zombieguard has the verdict: a pool process that died in a guarded
        task is a stall (recovered, not failed or requeued forever) or a kill at a limit (timed out,
        recorded once); Celery's own hard limit passing for an attempt that no longer holds the task
        records nothing (the pool reports it here first, then to :meth:`on_timeout`)."""
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback
        if self._zg_timed_out:
            internals.task_ready(self)
            return  # already recorded as timed out; the late news of its process is not another failure
        pool_limit = isinstance(exc, TimeLimitExceeded) and not return_ok  # a task's own: return_ok
        if pool_limit and (self._zg_stalled_frozen() or self._zg_superseded(exc)):
            return
        runtime = this_process.runtime
        lost = isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt)
        terminated = type(exc).__name__ == "Terminated"
        if runtime is not None and runtime.monitor is not None and (lost or terminated):
            verdict = None
            with contained(f"celery task {self.id}: its pool process died"):
                verdict = runtime.monitor.deaths.verdict(self, terminated, how=str(exc) if lost else "")
            if verdict in (Outcome.TIMED_OUT, Outcome.HUNG):
                policy = runtime.policy(self.task, self._zg_limits)
                limit = policy.hard_timeout if verdict is Outcome.TIMED_OUT else policy.progress_timeout
                self.zg_timed_out(limit or 0)
                return
            if verdict in (Outcome.STALLED, Outcome.LEASE_LOST):
                internals.task_ready(self)
                self.acknowledge()
                return
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)  # type: ignore[misc]
