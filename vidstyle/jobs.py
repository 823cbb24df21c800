"""Job records and live workers, kept in Redis: what the workers write and
`vidstyle status/watch/list/cancel/workers` read.

    vidstyle:job:ID      hash: one job (the fields of `Job`; for a job split
                         into segments also segment:N:done and segment:N:worker),
                         expires `retention` seconds after its last change
    vidstyle:jobs        sorted set: job ids by creation time, for `vidstyle list`
    vidstyle:worker:NAME hash: one live worker; expires unless its heartbeat renews it

Deliberately free of torch and Celery, so the monitoring commands start at once.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from vidstyle.config import setting
from vidstyle.errors import VidstyleError

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
DEFAULT_QUEUE = "vidstyle"
JOB_PREFIX, JOB_INDEX, WORKER_PREFIX = "vidstyle:job:", "vidstyle:jobs", "vidstyle:worker:"

# Sets fields of a job only if it is in one of the given states, atomically, so
# a worker starting a job and a user cancelling it cannot both win.
# KEYS[1] job; ARGV[1] retention; ARGV[2] allowed states, space separated; ARGV[3..] field, value.
# Returns {1 if applied else 0, the state it was in ('' if there is no such job)}.
TRANSITION_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, ''} end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. state .. ' ', 1, true) then return {0, state} end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {1, state}
"""

# A segment's progress: its own frame count, and the job's as the sum over its segments.
# KEYS[1] job; ARGV[1] retention; ARGV[2] segment index; ARGV[3] frames done; ARGV[4] now.
# Returns {frames done in all segments, cancel requested (1/0)}.
SEGMENT_PROGRESS_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return {0, 1} end
redis.call('HSET', KEYS[1], 'segment:' .. ARGV[2] .. ':done', ARGV[3])
local record = redis.call('HGETALL', KEYS[1])
local done, started = 0, 0
for i = 1, #record, 2 do
  if string.match(record[i], '^segment:%d+:done$') then done = done + tonumber(record[i + 1]) end
  if record[i] == 'started_at' then started = tonumber(record[i + 1]) end
end
local total = tonumber(redis.call('HGET', KEYS[1], 'frames_total')) or 0
local fps = done / math.max(tonumber(ARGV[4]) - started, 1e-6)
local eta = 0
if fps > 0 then eta = math.max(total - done, 0) / fps end
redis.call('HSET', KEYS[1], 'frames_done', done, 'fps', string.format('%.2f', fps),
           'eta_seconds', string.format('%.1f', eta), 'updated_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {done, redis.call('HGET', KEYS[1], 'cancel_requested') == '1' and 1 or 0}
"""
AUTO = "auto"


@dataclass
class Job:
    """One stylization job. Paths are relative to the storage root, which each
    client and worker mounts wherever it likes (VIDSTYLE_STORAGE)."""

    id: str
    input: str
    output: str
    style: str
    queue: str
    codec: str
    crf: int
    preset: str
    batch_size: int = 0  # 0: the pipeline picks one for the worker's device
    # Split a long video over several workers: "auto" (from its length and the
    # live workers), "off", or about this many seconds per segment.
    segment_seconds: str = AUTO
    segments: int = 0  # how many it was split into; 0: one task stylizes it whole
    temporal_strength: float = 0.0  # vidstyle.temporal's blend, as submitted (0: off)
    sequence_fps: str = ""  # an image-sequence input's frame rate, "24000/1001" say ("": vidstyle.formats' default)
    join_seconds: float = 0.0  # how long joining the segments took
    state: str = QUEUED
    frames_done: int = 0
    frames_total: int = 0
    fps: float = 0.0
    eta_seconds: float = 0.0
    worker: str = ""
    attempts: int = 0
    error: str = ""
    cancel_requested: bool = False
    created_at: float = field(default_factory=time.time)
    started_at: float = 0.0
    finished_at: float = 0.0
    updated_at: float = 0.0

    @classmethod
    def from_record(cls, record: dict[str, str]) -> Job:
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(**{name: _parse(types[name], value) for name, value in record.items() if name in types})

    def to_record(self) -> dict[str, str]:
        return {name: _format(value) for name, value in dataclasses.asdict(self).items()}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse(type_name: str, value: str) -> object:
    if type_name == "bool":
        return value == "1"
    return {"int": int, "float": float}.get(type_name, str)(value)


def _format(value: object) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


@dataclass
class WorkerInfo:
    """A live worker as its heartbeat describes it; `jobs` are the ids its pool processes are running."""

    name: str
    device: str
    queues: str
    concurrency: int
    pid: int
    started_at: float
    seen_at: float
    jobs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def connect(url: str) -> redis.Redis:
    """A Redis client that gives up within seconds: a CLI must not hang on an unreachable server."""
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
    )


def broker_url() -> str:
    url = setting("VIDSTYLE_BROKER_URL")
    if not url:
        raise VidstyleError("no broker configured: set VIDSTYLE_BROKER_URL (e.g. redis://host:6379/0)")
    return url


def job_store_url() -> str:
    """VIDSTYLE_RESULT_URL, else the broker's URL: by default one Redis holds queues and jobs."""
    return setting("VIDSTYLE_RESULT_URL") or broker_url()


def seconds_setting(name: str, default: float) -> float:
    """A positive number of seconds from setting `name`."""
    value = setting(name)
    try:
        seconds = float(value) if value is not None else default
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise VidstyleError(f"{name} must be a positive number of seconds, not '{value}'")
    return seconds


def retention_seconds() -> int:
    return max(1, round(seconds_setting("VIDSTYLE_JOB_RETENTION", DEFAULT_RETENTION_SECONDS)))


class JobStore:
    """Job records and worker heartbeats in one Redis database."""

    def __init__(self, client: redis.Redis, retention: int = DEFAULT_RETENTION_SECONDS):
        self.redis = client
        self.retention = retention
        self._transition = client.register_script(TRANSITION_LUA)
        self._segment_progress = client.register_script(SEGMENT_PROGRESS_LUA)

    @classmethod
    def from_settings(cls) -> JobStore:
        return cls(connect(job_store_url()), retention_seconds())

    # -- jobs ---------------------------------------------------------------

    def create(self, job: Job) -> None:
        key = JOB_PREFIX + job.id
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping=job.to_record())
        pipe.expire(key, self.retention)
        pipe.zadd(JOB_INDEX, {job.id: job.created_at})
        pipe.execute()

    def delete(self, job_id: str) -> None:
        self.redis.pipeline().delete(JOB_PREFIX + job_id).zrem(JOB_INDEX, job_id).execute()

    def find(self, job_id: str) -> Job | None:
        record = self.redis.hgetall(JOB_PREFIX + job_id)
        return Job.from_record(record) if record else None

    def get(self, job_id: str) -> Job:
        job = self.find(job_id)
        if job is None:
            raise VidstyleError(f"no job '{job_id}' (unknown, or expired after {self.retention} s)")
        return job

    def recent(self, limit: int = 50, states: tuple[str, ...] = ()) -> list[Job]:
        """The newest jobs first, optionally only those in `states`; forgets expired ones."""
        jobs, gone, start = [], [], 0
        while len(jobs) < limit:
            ids = self.redis.zrevrange(JOB_INDEX, start, start + limit - 1)
            if not ids:
                break
            start += len(ids)
            pipe = self.redis.pipeline()
            for job_id in ids:
                pipe.hgetall(JOB_PREFIX + job_id)
            for job_id, record in zip(ids, pipe.execute()):
                if not record:
                    gone.append(job_id)
                elif not states or record.get("state") in states:
                    jobs.append(Job.from_record(record))
        if gone:
            self.redis.zrem(JOB_INDEX, *gone)
        return jobs[:limit]

    def transition(self, job_id: str, from_states: tuple[str, ...], **fields: object) -> tuple[bool, str]:
        """Set `fields` if the job is in one of `from_states`: (applied, the state it was in)."""
        fields["updated_at"] = time.time()
        args = [self.retention, " ".join(from_states)]
        for name, value in fields.items():
            args += [name, _format(value)]
        applied, state = self._transition(keys=[JOB_PREFIX + job_id], args=args)
        return bool(applied), state

    def start(self, job_id: str, worker: str) -> Job | None:
        """Mark the job running on `worker` and count the attempt; None if it is not
        to be run (cancelled while queued, already finished, or expired). A job
        already `running` is a redelivery after its worker died, so it starts again."""
        applied, _ = self.transition(job_id, (QUEUED, RUNNING), state=RUNNING, worker=worker, error="",
                                     started_at=time.time(), frames_done=0, fps=0.0, eta_seconds=0.0)
        if not applied:
            return None
        self.redis.hincrby(JOB_PREFIX + job_id, "attempts", 1)
        return self.find(job_id)

    def report_progress(self, job_id: str, done: int, total: int, fps: float, eta_seconds: float) -> bool:
        """Record progress of a running job; True if the user asked to cancel it."""
        self.transition(job_id, (RUNNING,), frames_done=done, frames_total=total, fps=round(fps, 2),
                        eta_seconds=round(eta_seconds, 1))
        return self.redis.hget(JOB_PREFIX + job_id, "cancel_requested") == "1"

    def split(self, job_id: str, segments: int, frames_total: int) -> bool:
        """Record that a running job is split; False if it already was (a redelivered
        first task must not split it twice) or is no longer running."""
        if not self.redis.hsetnx(JOB_PREFIX + job_id, "split", "1"):
            return False
        applied, _ = self.transition(job_id, (RUNNING,), segments=segments, frames_total=frames_total, frames_done=0)
        return applied

    def start_segment(self, job_id: str, index: int, worker: str) -> Job | None:
        """The job, if its segment is to run: None if the job was cancelled, failed or expired."""
        job = self.find(job_id)
        if job is None or job.state != RUNNING or job.cancel_requested:
            return None
        self.redis.hset(JOB_PREFIX + job_id, f"segment:{index}:worker", worker)
        return job

    def report_segment_progress(self, job_id: str, index: int, done: int) -> bool:
        """Record a segment's frames done (the job's are their sum); True if the job is to stop."""
        _, stop = self._segment_progress(keys=[JOB_PREFIX + job_id], args=[self.retention, index, done, time.time()])
        return bool(stop)

    def segment_workers(self, job_id: str) -> dict[int, str]:
        """Which worker ran (or runs) each segment of a split job."""
        record = self.redis.hgetall(JOB_PREFIX + job_id)
        return {int(key.split(":")[1]): value for key, value in record.items()
                if key.startswith("segment:") and key.endswith(":worker")}

    def finish(self, job_id: str, state: str, error: str = "") -> None:
        self.transition(job_id, (QUEUED, RUNNING), state=state, error=error, finished_at=time.time(), eta_seconds=0.0)

    def requeue(self, job_id: str, reason: str) -> None:
        """A transient failure: the job waits in the queue for another attempt."""
        self.transition(job_id, (RUNNING,), state=QUEUED, error=f"retrying after: {reason}")

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop after its current batch."""
        applied, state = self.transition(job_id, (QUEUED,), state=CANCELLED, finished_at=time.time())
        if not applied and state == RUNNING:
            self.transition(job_id, (RUNNING,), cancel_requested=True)
        job = self.get(job_id)
        if job.state in FINAL_STATES and not applied:
            raise VidstyleError(f"job {job_id} already {job.state}")
        return job

    # -- workers ------------------------------------------------------------

    def beat(self, worker: WorkerInfo, ttl: float) -> None:
        key = WORKER_PREFIX + worker.name
        fields = {k: _format(v) for k, v in worker.to_dict().items() if k != "jobs"}
        self.redis.pipeline().hset(key, mapping=fields).expire(key, round(ttl)).execute()

    def set_current_job(self, worker_name: str, pid: int, job_id: str | None) -> None:
        key = WORKER_PREFIX + worker_name
        if job_id is None:
            self.redis.hdel(key, f"job:{pid}")
        elif self.redis.exists(key):  # never resurrect the record of a worker that is gone
            self.redis.hset(key, f"job:{pid}", job_id)

    def forget_worker(self, worker_name: str) -> None:
        self.redis.delete(WORKER_PREFIX + worker_name)

    def live_workers(self) -> list[WorkerInfo]:
        keys = sorted(self.redis.scan_iter(WORKER_PREFIX + "*", count=500))
        pipe = self.redis.pipeline()
        for key in keys:
            pipe.hgetall(key)
        workers = []
        types = {f.name: f.type for f in dataclasses.fields(WorkerInfo)}
        for record in pipe.execute():
            if "name" not in record:
                continue  # expired between the scan and the read
            jobs = sorted(v for k, v in record.items() if k.startswith("job:"))
            fields = {k: _parse(types[k], v) for k, v in record.items() if k in types and k != "jobs"}
            workers.append(WorkerInfo(**fields, jobs=jobs))
        return workers
