"""What every guarded worker process runs beside its framework, whichever the framework.

Each integration's worker guard derives from :class:`WorkerRuntime` and adds what is its own (how
its jobs run, how they are announced and stopped).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import redis

from zombieguard import __version__
from zombieguard.adapter import JobAdapter
from zombieguard.containment import contained, log, named
from zombieguard.enforcement.children import OWNER_VARIABLE, JobProcesses, new_owner, owned_by, without_owner
from zombieguard.enforcement.reaper import LEAVE
from zombieguard.enforcement.slot import SIZE as SLOT_SIZE
from zombieguard.enforcement.slot import JobSlot, remove_stale_workdirs
from zombieguard.enforcement.watchdog import Watchdog
from zombieguard.enforcement.watchdog_process import WATCHDOG_VARIABLE
from zombieguard.errors import LeaseLost
from zombieguard.events import Subject
from zombieguard.leases import JobSpec, LeaseStore, Outcome
from zombieguard.leases.connection import RedisTarget
from zombieguard.ops.doctor import eviction_problem
from zombieguard.ops.stats import EventCounter
from zombieguard.policy import Policy, fix_settings
from zombieguard.recovery.presence import PresenceWatch
from zombieguard.recovery.sweeper import Sweeper
from zombieguard.worker.heartbeat import Heartbeat, LostCallback
from zombieguard.worker.lifecycle import end_found
from zombieguard.worker.onbehalf import give_up
from zombieguard.worker.presence import Presence

LEFT_BY = "worker.json"
"""The file in a worker's working directory that says whose it is (see ``_give_up_left``)."""


class WorkerRuntime:
    """One guarded worker process's presence and heartbeat, its sweeper, its watchdog thread, its
    working directory and, where jobs run in the worker's own process, the watchdog process beside it.
    """

    def __init__(
        self,
        store: LeaseStore,
        adapter: JobAdapter,
        *,
        worker: str,
        renew_every: float,
        on_lost: LostCallback,
        dir_prefix: str,
        watchdog_name: str,
        children_grace: float,
        target: RedisTarget,
    ) -> None:
        self.store = store
        self.adapter = adapter
        self.framework = adapter.name
        self.worker = worker
        self.heartbeat = Heartbeat(store, adapter.name, worker, renew_every, on_lost=on_lost)
        self.sweeper = Sweeper(
            store, {adapter.name: adapter}, name=f"{adapter.name}:{worker}", sender=adapter.name
        )
        self.counter = EventCounter(store)
        self.watchdog = Watchdog(name=watchdog_name)
        on = store.settings.presence_grace is not None
        self.presence = Presence(store, adapter.name, worker) if on else None
        self.presence_watch = PresenceWatch(store, self.sweeper, adapter.name) if on else None
        self.target = target
        remove_stale_workdirs(dir_prefix, before_removal=self._predecessor_gone)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{dir_prefix}{os.getpid()}-"))
        (self.dir / LEFT_BY).write_text(json.dumps(self._deployment()))
        self.watchdog_process: subprocess.Popen[bytes] | None = None
        self.children_grace = children_grace
        self._dismissing = threading.Lock()
        # Every process this worker's jobs start inherits it: the reaper finds them by it.
        self.owner = new_owner()
        os.environ[OWNER_VARIABLE] = self.owner
        self.reaper = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zombieguard.enforcement.reaper",
                "--pid",
                str(os.getpid()),
                "--owner",
                self.owner,
                "--grace",
                repr(children_grace),
            ],
            stdin=subprocess.PIPE,
            env=without_owner(os.environ),
            start_new_session=True,  # a kill of the worker's process group leaves it to act
        )
        where = {
            "redis": target.to_json(),
            "key_prefix": store.settings.key_prefix,
            "adapter": adapter.name,
            "worker": worker,
        }
        with contextlib.suppress(OSError):  # through a pipe: the password never shows in argv
            assert self.reaper.stdin is not None
            self.reaper.stdin.write(json.dumps(where).encode() + b"\n")
            self.reaper.stdin.flush()

    def _deployment(self) -> dict[str, str]:
        """Whose working directory this is: the worker, and the leases it keeps (where, which prefix)."""
        return {
            "worker": self.worker,
            "leases": self.target.describe(),
            "key_prefix": self.store.settings.key_prefix,
        }

    def _predecessor_gone(self, workdir: Path) -> None:
        """A worker of this integration died on this machine, leaving ``workdir``: give up the jobs
        it left running, and hand back what its broker still holds for it (its watchdog process, if
        it outlived it, did both already)."""
        with contained(f"{self.framework} worker: giving up the jobs a dead worker on this machine left"):
            self._give_up_left(workdir)
        with contained(f"{self.framework} worker: handing back what a dead worker on this machine held"):
            self.adapter.worker_gone(workdir)

    def _give_up_left(self, workdir: Path) -> None:
        """The jobs a dead worker of this deployment left running in its slots: given up as stalls,
        as its watchdog process would have, had it outlived the worker (a service manager stops a
        whole control group; a forking worker has none). A sweeper then recovers each without
        waiting for its lease to expire; and a lease lost with a primary failed over a moment
        before, which nothing else would find, is written again from the slot."""
        try:
            left = json.loads((workdir / LEFT_BY).read_text())
            worker = str(left["worker"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # a directory of no worker of this version
        if {k: left.get(k) for k in ("leases", "key_prefix")} != {
            k: v for k, v in self._deployment().items() if k != "worker"
        }:
            return  # a worker of another deployment on this machine
        payload = None if self.adapter.requeues_from_payload else ""
        for path in sorted([*workdir.glob("slot*"), *workdir.glob("*/slot*")]):
            if not path.is_file() or path.stat().st_size != SLOT_SIZE:
                continue
            slot = JobSlot(path)
            state = slot.read()
            slot.close()
            if not state.active or not state.token:
                continue
            try:
                give_up(
                    self.store,
                    state,
                    state.token,
                    Outcome.STALLED,
                    adapter=self.framework,
                    worker=worker,
                    payload=payload,
                )
            except LeaseLost:
                continue  # recovered already
            except redis.RedisError as exc:
                log.warning(
                    "%s job %s: not given up (%s); its lease expires instead",
                    self.framework,
                    state.job_id,
                    exc,
                )
                continue
            log.warning(
                "%s worker %s died with job %s running (its working directory left on this machine); "
                "given up for recovery",
                self.framework,
                worker,
                state.job_id,
            )

    def start_watchdog_process(
        self,
        *,
        slot: Path,
        dump: Path,
        adapter: str,
        adapter_arg: str = "",
        grace: str = "",
        slot_payload: str = "",
    ) -> None:
        """Start the watchdog process beside this one: it kills this process when a job stuck in it
        passes its limit and no thread here can act (C code holding the GIL), and acts for the jobs
        this process leaves when it dies. ``adapter``: how the watchdog process loads the integration's
        adapter (``module:factory``, given the Redis client and ``adapter_arg``); ``grace``: seconds
        it leaves this process first; ``slot_payload``: how it reads a payload a slot keeps
        (``module:function``). The leases' Redis and ``adapter_arg`` reach it through its
        environment, as they may carry a password: any local user can read a command line."""
        options = {
            "--pid": str(os.getpid()),
            "--slot": str(slot),
            "--dump": str(dump),
            "--key-prefix": self.store.settings.key_prefix,
            "--adapter": adapter,
            "--integration": self.framework,
            "--worker": self.worker,
            "--owner": self.owner,
            "--workdir": str(self.dir),
        }
        if grace:
            options["--grace"] = grace
        if slot_payload:
            options["--slot-payload"] = slot_payload
        command = [sys.executable, "-m", "zombieguard.enforcement.watchdog_process"]
        for option, value in options.items():
            command += [option, value]
        env = without_owner(os.environ)
        env[WATCHDOG_VARIABLE] = json.dumps({"redis": self.target.to_json(), "adapter_arg": adapter_arg})
        self.watchdog_process = subprocess.Popen(command, env=env)

    def job_processes(self, job: str, pid: int, since: float, thread: int | None = None) -> JobProcesses:
        """Where the processes of job ``job``, running in ``pid`` since ``since``, are (``thread``:
        the native id of the thread that runs it, where other jobs run in other threads of ``pid``)."""
        own = {p.pid for p in (self.reaper, self.watchdog_process) if p is not None}
        return JobProcesses(pid, since, thread, frozenset(own), self.owner, job)

    def launch(self, info: Mapping[str, str]) -> None:
        """Register the worker (``info``: what ``status`` shows of it), recover what dead workers left
        before the framework's own clean-up can fail it, then start the threads. The presence
        connection is subscribed first: a worker is watched only once it is."""
        if self.presence is not None and not self.presence.start():
            log.warning(
                "%s worker %s: presence connection not subscribed yet; until it is, a crash of this "
                "worker is found by its leases' expiry",
                self.framework,
                self.worker,
            )
        with contained(f"registering {self.framework} worker {self.worker}"):
            try:
                self.store.register_worker(
                    self.worker,
                    {
                        "adapter": self.framework,
                        "host": socket.gethostname(),
                        "pid": str(os.getpid()),
                        **info,
                    },
                    self.heartbeat.worker_ttl,
                )
                self.sweeper.sweep_once()
            except redis.RedisError as exc:
                log.warning(
                    "%s worker %s: Redis for leases unreachable at start (%s); retrying",
                    self.framework,
                    self.worker,
                    exc,
                )
            else:
                self._warn_of_eviction()
        fix_settings(self.store.settings)
        self.heartbeat.start()
        self.sweeper.start()
        if self.presence_watch is not None:
            self.presence_watch.start()
        self.watchdog.start()

    def announce(self, model: str, policy: Policy, tasks: str) -> None:
        """Say that zombieguard guards this worker, and how: ``model``, how its jobs run; ``policy``,
        the defaults; ``tasks``, which of its tasks are guarded."""

        def limit(seconds: float | None) -> str:
            return "none" if seconds is None else f"{seconds:g} s"

        settings = self.store.settings
        found = (
            f"a dead worker's jobs in about {settings.presence_grace:g} s (its connection closes), a "
            f"frozen one's after lease_ttl {policy.lease_ttl:g} s"
            if settings.presence_grace is not None
            else f"a dead or frozen worker's jobs after lease_ttl {policy.lease_ttl:g} s"
        )
        log.info(
            "zombieguard %s guards %s worker %s (%s)\n"
            "  leases:   %s, keys {%s}:*\n"
            "  recovery: %s; dead-lettered after %d stalls%s\n"
            "  limits:   hard_timeout %s, soft_timeout %s, progress_timeout %s (defaults)\n"
            "  tasks:    %s",
            __version__,
            self.framework,
            self.worker,
            model,
            self.target.describe(),
            settings.key_prefix,
            found,
            policy.max_stalls,
            "" if policy.dead_letter else " (dead_letter off: failed instead)",
            limit(policy.hard_timeout),
            limit(policy.soft_timeout),
            limit(policy.progress_timeout),
            tasks,
        )

    def _warn_of_eviction(self) -> None:
        try:
            problem = eviction_problem(self.store, self.target.describe())
        except redis.RedisError as exc:  # INFO refused to this ACL user, say
            log.info("%s worker %s: eviction policy not read (%s)", self.framework, self.worker, exc)
            return
        if problem is not None:
            log.warning("%s worker %s: %s. Fix: %s", self.framework, self.worker, *problem)

    def give_up_stalled(
        self,
        spec: JobSpec,
        token: int,
        why: str,
        before_sweep: Callable[[], object] = tuple,
        again: Callable[[], bool] | None = None,
    ) -> bool:
        """The execution of ``spec`` under ``token`` stalled (``why``: its process died, or its worker
        was frozen past its lease and a limit): give its lease up as stalled, call ``before_sweep``
        (stop what is left of the execution), and sweep at once, so that the job is recovered or
        dead-lettered now. ``again`` writes the attempt's lease again when Redis no longer has it
        (lost in a failover or a restart without persistence; see ``Attempt.reestablish``), to be
        given up then. False when another attempt or a sweeper had it already, or when its lease
        is missing and not written again (nothing would recover the job: the framework's own
        handling must); Redis away, the lease expires instead."""
        job = f"{self.framework} job {spec.job_id}"
        log.warning("%s: %s; recovering it", named(self.framework, spec.task, spec.job_id), why)
        missing = False
        try:
            missing = self.store.abandon(spec, token, Outcome.STALLED, how=why) == "missing"
            if missing and again is not None and again():
                missing = False
                self.store.abandon(spec, token, Outcome.STALLED, how=why)
        except LeaseLost:
            return False
        except redis.RedisError as exc:
            log.warning("%s: lease not given up (%s)%s", job, exc, "" if missing else "; it expires instead")
            return not missing
        finally:
            before_sweep()
        if missing:
            log.warning("%s: its lease is missing from Redis; left to %s's own handling", job, self.framework)
            return False
        try:
            self.sweeper.sweep_once()
        except redis.RedisError as exc:
            log.warning("%s: not swept at once (%s); the next sweep recovers it", job, exc)
        return True

    def end_orphans(self, spec: JobSpec, token: int, attempt: int) -> None:
        """The process that ran attempt ``attempt`` of ``spec`` (under ``token``) died by itself
        (OOM-killed, a crash), leaving what the job started: end the programs that carry the job's
        mark, with this worker's ``kill_children_grace``, and say so as a stop does."""
        subject = Subject(spec.job_id, spec.task, spec.queue, attempt, self.worker, self.framework)

        def note(processes: tuple[str, ...]) -> None:
            self.store.note_ended_processes(spec.job_id, token, self.worker, processes)

        found = owned_by(self.owner, spec.job_id)
        end_found(found, self.children_grace, adapter=self.framework, make=subject.event, note=note)

    def shutdown(self) -> None:
        """Stop the threads and the watchdog process, and leave cleanly (not a zombie)."""
        fix_settings(None)
        self.watchdog.stop()
        if self.presence_watch is not None:
            self.presence_watch.stop()
        self.sweeper.stop()
        self.heartbeat.stop()
        if self.presence is not None:
            self.presence.stop()
        self.counter.close()
        if self.watchdog_process is not None:
            self.watchdog_process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog_process.wait(5)
            self.watchdog_process = None
        self._dismiss_reaper()
        with (
            contained(f"deregistering {self.framework} worker {self.worker}"),
            contextlib.suppress(redis.RedisError),
        ):
            self.store.deregister_worker(self.worker)

    def _dismiss_reaper(self) -> None:
        """Tell the reaper this worker leaves cleanly: the programs its jobs left running go on.
        Said once, whichever of the threads that stop the worker comes first."""
        with self._dismissing:
            if os.environ.get(OWNER_VARIABLE) == self.owner:
                del os.environ[OWNER_VARIABLE]
            stdin = self.reaper.stdin
            if stdin is not None and not stdin.closed:
                with contextlib.suppress(OSError):  # it died: nothing to tell
                    stdin.write(LEAVE)
                with contextlib.suppress(OSError):
                    stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.reaper.wait(5)

    def remove_dir(self, keep: str | None = None) -> None:
        """Delete the working directory and what is in it (its files are closed); with ``keep``, all
        but that file (a worker started later on this machine reads it if this one dies first)."""
        if keep is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for child in list(self.dir.iterdir()) if self.dir.exists() else []:
            if child.name == keep:
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
