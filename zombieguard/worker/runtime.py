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

from zombieguard.adapter import JobAdapter
from zombieguard.containment import contained, log
from zombieguard.enforcement.children import OWNER_VARIABLE, JobProcesses, new_owner, owned_by, without_owner
from zombieguard.enforcement.reaper import LEAVE
from zombieguard.enforcement.slot import remove_stale_workdirs
from zombieguard.enforcement.watchdog import Watchdog
from zombieguard.errors import LeaseLost
from zombieguard.events import Subject
from zombieguard.leases import JobSpec, LeaseStore, Outcome
from zombieguard.ops.stats import EventCounter
from zombieguard.recovery.presence import PresenceWatch
from zombieguard.recovery.sweeper import Sweeper
from zombieguard.worker.heartbeat import Heartbeat, LostCallback
from zombieguard.worker.lifecycle import end_found
from zombieguard.worker.presence import Presence


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
        redis_url: str,
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
        remove_stale_workdirs(dir_prefix, before_removal=self._predecessor_gone)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{dir_prefix}{os.getpid()}-"))
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
            "redis_url": redis_url,
            "key_prefix": store.settings.key_prefix,
            "adapter": adapter.name,
            "worker": worker,
        }
        with contextlib.suppress(OSError):  # through a pipe: a password never shows in argv
            assert self.reaper.stdin is not None
            self.reaper.stdin.write(json.dumps(where).encode() + b"\n")
            self.reaper.stdin.flush()

    def _predecessor_gone(self, workdir: Path) -> None:
        """A worker of this integration died on this machine, leaving ``workdir``: hand back what
        its broker still holds for it (its watchdog process, if it outlived it, did so already)."""
        with contained(f"{self.framework} worker: handing back what a dead worker on this machine held"):
            self.adapter.worker_gone(workdir)

    def start_watchdog_process(
        self,
        *,
        slot: Path,
        dump: Path,
        redis_url: str,
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
        (``module:function``)."""
        options = {
            "--pid": str(os.getpid()),
            "--slot": str(slot),
            "--dump": str(dump),
            "--redis-url": redis_url,
            "--key-prefix": self.store.settings.key_prefix,
            "--adapter": adapter,
            "--integration": self.framework,
            "--worker": self.worker,
            "--owner": self.owner,
            "--workdir": str(self.dir),
        }
        if adapter_arg:
            options["--adapter-arg"] = adapter_arg
        if grace:
            options["--grace"] = grace
        if slot_payload:
            options["--slot-payload"] = slot_payload
        command = [sys.executable, "-m", "zombieguard.enforcement.watchdog_process"]
        for option, value in options.items():
            command += [option, value]
        self.watchdog_process = subprocess.Popen(command, env=without_owner(os.environ))

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
        self.heartbeat.start()
        self.sweeper.start()
        if self.presence_watch is not None:
            self.presence_watch.start()
        self.watchdog.start()

    def give_up_stalled(
        self, spec: JobSpec, token: int, why: str, before_sweep: Callable[[], object] = tuple
    ) -> bool:
        """The execution of ``spec`` under ``token`` stalled (``why``: its process died, or its worker
        was frozen past its lease and a limit): give its lease up as stalled, call ``before_sweep``
        (stop what is left of the execution), and sweep at once, so that the job is recovered or
        dead-lettered now. False when another attempt or a sweeper had it already; Redis away, the
        lease expires instead."""
        job = f"{self.framework} job {spec.job_id}"
        log.warning("%s job %s[%s]: %s; recovering it", self.framework, spec.task, spec.job_id, why)
        try:
            self.store.abandon(spec, token, Outcome.STALLED)
        except LeaseLost:
            return False
        except redis.RedisError as exc:
            log.warning("%s: lease not given up (%s); it expires instead", job, exc)
            return True
        finally:
            before_sweep()
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
