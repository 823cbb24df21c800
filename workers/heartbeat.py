"""Worker presence for `vidstyle workers`: each worker renews a short-lived
record in the job store, so a worker that dies (even by SIGKILL) drops out of
the list within seconds."""
from __future__ import annotations

import logging
import os
import time

import redis
from celery import bootsteps

from vidstyle.config import setting
from vidstyle.jobs import JobStore, WorkerInfo

HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_SECONDS = 3 * HEARTBEAT_SECONDS  # two missed beats are forgiven

logger = logging.getLogger(__name__)


def worker_device() -> str:
    """The device this worker's pool processes run the networks on (VIDSTYLE_DEVICE, else CUDA when present)."""
    from vidstyle.inference import resolve_device  # torch: only in workers

    return str(resolve_device(setting("VIDSTYLE_DEVICE")))


class Heartbeat(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.store: JobStore | None = None
        self.info: WorkerInfo | None = None
        self.timer_entry = None

    def start(self, worker) -> None:
        self.store = JobStore.from_settings()
        self.info = WorkerInfo(
            name=worker.hostname, device=worker_device(),
            queues=",".join(sorted(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)),
            concurrency=worker.concurrency, pid=os.getpid(), started_at=time.time(), seen_at=time.time(),
        )
        conf = worker.app.conf
        visibility_timeout = conf.broker_transport_options["visibility_timeout"]
        if visibility_timeout <= conf.task_time_limit:
            logger.warning("VIDSTYLE_VISIBILITY_TIMEOUT (%.0f s) is not longer than the job time limit (%.0f s): "
                           "a long job may be handed to a second worker while it still runs",
                           visibility_timeout, conf.task_time_limit)
        self.store.forget_worker(worker.hostname)  # drop job entries left by an earlier run of this name
        self.beat()
        self.timer_entry = worker.timer.call_repeatedly(HEARTBEAT_SECONDS, self.beat)

    def beat(self) -> None:
        self.info.seen_at = time.time()
        try:
            self.store.beat(self.info, HEARTBEAT_TTL_SECONDS)
        except redis.RedisError as exc:  # the store is down: the worker carries on, the broker decides
            logger.warning("heartbeat not recorded: %s", exc)

    def stop(self, worker) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
        if self.store is not None:
            try:
                self.store.forget_worker(worker.hostname)
            except redis.RedisError:
                pass  # the record expires by itself
