"""Worker presence, and recovery from it: each worker renews a short-lived
record in the job store, so a worker that dies (even by SIGKILL) drops out of
`vidstyle workers` once its presence lapses (VIDSTYLE_WORKER_LAPSE), and every
other worker, or one that starts later, then puts its running jobs and segments
back on their queues (`recover_lost_units`, every VIDSTYLE_RECOVERY_INTERVAL s):
a dead node's job waits the lapse plus at most one interval, whatever Redis's
visibility timeout.

In the job store a worker goes by its id (`worker_id`): its name plus a part drawn
when it starts. Names need not be unique (two `vidstyle worker` on one host both
take `vidstyle@HOST`), and recovery must never take a live worker's unit for one
of its own whose pool process died."""
from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis
from celery import bootsteps, signals
from kombu.exceptions import OperationalError

from vidstyle.errors import VidstyleError
from vidstyle.workers.broker import hand_back_stranded
from vidstyle.workers.identity import WORKER_ID_ENV, worker_device, worker_id
from vidstyle.workers.jobs import (RUNNING, JobStore, WorkerInfo, parse_member, recovery_interval_seconds,
                          worker_lapse_seconds)
from vidstyle.workers.storage import storage_root
from vidstyle.workers.tasks import ON_TERM_REQUEUE, on_term_setting, publish_unit, remove_partials, unit_waits

HEARTBEAT_SECONDS = 2.0

logger = logging.getLogger(__name__)


def recover_lost_units(store: JobStore, worker_name: str, reserved_task_ids: Callable[[], set[str]],
                       lapse: float) -> None:
    """Put back the running units whose worker's presence has lapsed, and this
    worker's own whose task it no longer holds (its pool process died); publish
    again those whose recoverer died before it published; hand back messages taken
    by workers that died before they started them."""
    for member in store.active_units():
        try:
            recover_unit(store, member, worker_name, reserved_task_ids, storage_root)
        except (redis.RedisError, OperationalError):
            raise
        except Exception:  # one odd record must not stop the scan, nor the worker
            logger.exception("recovery of %s failed", member)
    for member in store.stale_requeues(older_than=lapse):
        if store.reclaim_requeue(member, older_than=lapse):
            publish_unit(store, member)
    hand_back_stranded(lapse, functools.partial(unit_waits, store))


def recover_unit(store: JobStore, member: str, worker_name: str, reserved_task_ids: Callable[[], set[str]],
                 storage_root: Callable[[], Path]) -> None:
    """Put back one running unit if its worker is lost."""
    job_id, unit = parse_member(member)
    fields = store.unit_fields(job_id, unit)  # read before the held tasks: an attempt started since is not ours to judge
    own_dead = None
    if fields["worker"] == worker_name and fields["state"] == RUNNING and fields["attempt"]:
        if json.loads(fields["message"] or "{}").get("id") not in reserved_task_ids():
            own_dead = int(fields["attempt"])
    claimed, number, owner = store.recover_unit(member, own_dead, worker_name)
    if not claimed:
        return
    logger.warning("job %s: %s of lost worker %s (attempt %d) taken back", job_id, unit.rstrip(":") or "job",
                   owner, number)
    job = store.find(job_id)
    if job is not None:
        try:
            remove_partials(job, unit, storage_root(), number)
        except (OSError, VidstyleError) as exc:
            logger.warning("job %s: partial file of attempt %d not removed: %s", job_id, number, exc)
    if claimed == 1:
        publish_unit(store, member)


def reserved_task_ids() -> set[str]:
    """The tasks this worker's main process has received and not yet seen end."""
    from celery.worker import state

    return {request.id for request in list(state.reserved_requests)}


class Heartbeat(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.store: JobStore | None = None
        self.info: WorkerInfo | None = None
        self.timer_entries = []
        self.worker = worker
        # Here, not in start: the pool processes may be forked before this step starts.
        os.environ[WORKER_ID_ENV] = f"{worker.hostname}#{secrets.token_hex(3)}"

    def start(self, worker) -> None:
        self.store = JobStore.from_settings()
        self.lapse = worker_lapse_seconds()
        self.info = WorkerInfo(
            name=worker_id(), device=worker_device(),
            queues=",".join(sorted(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)),
            concurrency=worker.concurrency, pid=os.getpid(), started_at=time.time(), seen_at=time.time(),
        )
        self.beat()
        self.recover()  # at once: a worker that starts after the dead one takes its jobs back
        self.timer_entries = [worker.timer.call_repeatedly(min(HEARTBEAT_SECONDS, self.lapse / 3), self.beat),
                              worker.timer.call_repeatedly(recovery_interval_seconds(), self.recover)]
        signals.worker_shutting_down.connect(self.hand_back_on_term, weak=False)

    def beat(self) -> None:
        self.info.seen_at = time.time()
        try:
            self.store.beat(self.info, self.lapse)
        except redis.RedisError as exc:  # the store is down: the worker carries on, its jobs stop past the lapse
            logger.warning("heartbeat not recorded: %s", exc)

    def recover(self) -> None:
        try:
            recover_lost_units(self.store, self.info.name, reserved_task_ids, self.lapse)
        except (redis.RedisError, OperationalError) as exc:
            logger.warning("recovery scan not done: %s", exc)
        except Exception:  # a bug here must not take the worker down
            logger.exception("recovery scan failed")

    def hand_back_on_term(self, sig=None, **_) -> None:
        """Under --on-term requeue, SIGTERM to this process alone (as Kubernetes and Docker
        send it) reaches the pool processes too: they stop their jobs at the next batch."""
        if sig != "SIGTERM" or on_term_setting() != ON_TERM_REQUEUE:
            return
        for pid in self.worker.pool.info.get("processes", []):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, worker) -> None:
        for entry in self.timer_entries:
            entry.cancel()
        if self.store is not None:
            try:
                self.store.forget_worker(worker_id())
            except redis.RedisError:
                pass  # the record expires by itself
