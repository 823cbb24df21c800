"""Celery settings for the fleet, from vidstyle's settings (environment, else the config file).

Why each matters for long GPU jobs on a Redis broker:
- acks_late + reject_on_worker_lost: a job is acknowledged only when it ends, so
  one on a worker that dies goes back to the queue instead of being lost;
- prefetch multiplier 1: a worker holds only the jobs it is running, and the
  rest stay in the queue for idle workers;
- visibility timeout: Redis hands an unacknowledged job to another worker after
  this long; recovery does not wait for it (vidstyle.workers.heartbeat takes back the jobs
  of workers whose presence lapsed), and a message that comes back for a job
  running on a live worker or already finished is dropped, so it only bounds
  how long a stale copy lingers in Redis;
- short connect timeouts and few publish retries: a client facing an
  unreachable broker says so within seconds instead of hanging.
"""
from __future__ import annotations

from vidstyle.inference import warm_sizes
from vidstyle.settings import seconds
from vidstyle.workers.jobs import DEFAULT_QUEUE
from vidstyle.workers.jobs import broker_url as configured_broker_url
from vidstyle.workers.jobs import job_store_url

TASK_NAME = "vidstyle.stylize"
SEGMENT_TASK_NAME = "vidstyle.stylize_segment"
JOIN_TASK_NAME = "vidstyle.join_segments"
TRAIN_TASK_NAME = "vidstyle.train"  # a training job (vidstyle.workers.training)

broker_url = configured_broker_url()
task_serializer = result_serializer = event_serializer = "json"
accept_content = result_accept_content = ["json"]  # pickle would let whoever can write to Redis run code on workers
task_ignore_result = True  # outcomes live in the job records (vidstyle.workers.jobs), not in Celery results
# ...except the segment tasks', which a chord counts to start the join: in the job store's Redis.
result_backend = job_store_url()
result_expires = 7 * 24 * 3600

task_default_queue = DEFAULT_QUEUE  # the GPU work queue
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_concurrency = 1  # a job at a time: one network fills a GPU (`vidstyle worker -c N` for more)
# A pool process compiles the warm sizes before it reports up (vidstyle.workers.tasks): seconds each from the
# cache `vidstyle worker` fills first, about a minute each without it (Triton's longer); Celery's
# default 4 s would kill it as failed to start.
WARM_SECONDS_PER_SIZE = 600.0
worker_proc_alive_timeout = 4.0 + WARM_SECONDS_PER_SIZE * len(warm_sizes())
# A job whose broker connection drops runs on: the copy of its message that Redis hands out again
# finds it running on a live worker and is dropped (vidstyle.workers.tasks). Celery's alternative, killing
# the job, would also record its segment as revoked and so fail the chord of a split job.
worker_cancel_long_running_tasks_on_connection_loss = False

task_time_limit = seconds("VIDSTYLE_JOB_TIME_LIMIT")
# The soft limit stops the job cleanly (its partial output removed) a minute, or half the limit, before the kill.
task_soft_time_limit = task_time_limit - min(60.0, task_time_limit / 2)
_visibility_timeout = seconds("VIDSTYLE_VISIBILITY_TIMEOUT", task_time_limit + 300)

broker_connection_timeout = 3
broker_connection_retry_on_startup = True  # a worker that boots before Redis waits for it
broker_transport_options = {
    "visibility_timeout": _visibility_timeout,
    "socket_connect_timeout": 3,
    "socket_timeout": 30,
    # Look for jobs of dead workers every 10 s (default ~100 s) once their visibility timeout has passed.
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
}
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
