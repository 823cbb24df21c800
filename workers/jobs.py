"""Job records and live workers, kept in Redis: what the workers write and
`vidstyle status/watch/list/cancel/workers` read.

    vidstyle:job:ID      hash: one job (the fields of `Job`; for a job split
                         into segments also segment:N:done and segment:N:worker),
                         expires `retention` seconds after its last change
    vidstyle:jobs        sorted set: job ids by creation time, for `vidstyle list`
    vidstyle:worker:ID   hash: one live worker (ID: NAME#RANDOM); expires unless its heartbeat renews it
    vidstyle:active      set: the units ("JOB|UNIT") being run now, for the recovery scan
    vidstyle:requeued    sorted set: units put back by a recovery or a preemption whose
                         message is being published (a recoverer that dies mid-way is replaced)

A job runs in units: the whole job (unit ""), or once split, its segments
("segment:N:") and their join ("join:"). Each start of a unit is an attempt
with a number unique within the job (its fence token); the record holds, per
unit, UNITstate, UNITworker, UNITpid, UNITattempt and UNITmessage (the Celery
message that runs it, to publish again), and per attempt attempt:N (JSON: unit,
worker, started_at, ended_at, outcome). Writes from an attempt that is no longer
its unit's current one are refused, so a worker that was only cut off cannot
overwrite or end a job that another worker has taken over.

Deliberately free of torch and Celery, so the monitoring commands start at once.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from vidstyle.settings import seconds, setting
from vidstyle.errors import VidstyleError

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
DEFAULT_QUEUE = "vidstyle"
# Training jobs wait on a queue of their own, so that a studio can keep some GPUs for them
# (`vidstyle worker --queues`); a worker started plainly takes both.
TRAINING_QUEUE = "vidstyle-training"
STYLE_TASK, UPSCALE_TASK = "style", "upscale"  # what a job does to each frame (Job.task)
# What a training job makes (Job.task): a style from a painting, or an upscaler (vidstyle.workers.training).
TRAIN_STYLE_TASK, TRAIN_UPSCALER_TASK = "train", "train-upscaler"
TRAINING_TASKS = (TRAIN_STYLE_TASK, TRAIN_UPSCALER_TASK)
JOB_PREFIX, JOB_INDEX, WORKER_PREFIX = "vidstyle:job:", "vidstyle:jobs", "vidstyle:worker:"
ACTIVE_UNITS, REQUEUED_UNITS = "vidstyle:active", "vidstyle:requeued"
WHOLE_JOB, JOIN = "", "join:"  # unit prefixes; a segment's is segment_unit(N)
# How an attempt ended, as `vidstyle status` lists them, besides the final states, 'worker lost'
# (written by the scripts below), 'retrying after: ...' and 'failed'.
PREEMPTED, SPLIT = "preempted", "split"

# Ends attempt number ARGV[n] of a job (KEYS[1]) with an outcome, unless it already ended.
END_ATTEMPT_LUA = """
local function end_attempt(number, outcome, now)
  local raw = number and redis.call('HGET', KEYS[1], 'attempt:' .. number)
  if not raw then return end
  local attempt = cjson.decode(raw)
  if attempt.outcome ~= '' then return end
  attempt.outcome, attempt.ended_at = outcome, tonumber(now)
  redis.call('HSET', KEYS[1], 'attempt:' .. number, cjson.encode(attempt))
end
"""

# Starts a unit of a job as a new attempt, if it is to run: the job is wanted,
# the unit is not done, and no live worker is running it (a message can come
# twice: redelivered after a recovery, or handed back by Celery).
# KEYS[1] job, KEYS[2] active units; ARGV[1] retention, [2] unit, [3] member,
# [4] worker, [5] pid, [6] now, [7] message (JSON), [8] worker key prefix,
# [9] pid of this worker whose attempt may be taken over ('' if none).
# Returns {attempt number, ''} or {0, why not}.
START_UNIT_LUA = END_ATTEMPT_LUA + """
local unit = ARGV[2]
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, 'gone'} end
if unit == '' then
  if state ~= 'queued' and state ~= 'running' then return {0, state} end
  if redis.call('HGET', KEYS[1], 'split') == '1' then return {0, 'split'} end
elseif state ~= 'running' then return {0, 'stopped'} end
local unit_state = redis.call('HGET', KEYS[1], unit .. 'state')
if unit_state == 'done' then return {0, 'done'} end
local previous = redis.call('HGET', KEYS[1], unit .. 'attempt')
if unit_state == 'running' then
  local owner = redis.call('HGET', KEYS[1], unit .. 'worker') or ''
  local own_dead = owner == ARGV[4] and redis.call('HGET', KEYS[1], unit .. 'pid') == ARGV[9]
  if redis.call('EXISTS', ARGV[8] .. owner) == 1 and not own_dead then return {0, 'running elsewhere'} end
  end_attempt(previous, 'worker lost', ARGV[6])
end
local number = redis.call('HINCRBY', KEYS[1], 'attempt_seq', 1)
redis.call('HSET', KEYS[1], unit .. 'state', 'running', unit .. 'worker', ARGV[4], unit .. 'pid', ARGV[5],
           unit .. 'attempt', number, unit .. 'message', ARGV[7], 'attempt:' .. number,
           cjson.encode({unit = unit, worker = ARGV[4], started_at = tonumber(ARGV[6]), ended_at = 0, outcome = ''}))
if unit == '' then
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('HSET', KEYS[1], 'started_at', ARGV[6], 'error', '', 'frames_done', 0, 'fps', 0, 'eta_seconds', 0)
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[6])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {number, ''}
"""

# Ends an attempt of a unit, only if it is still the unit's current one (and,
# with ARGV[7] = '1', still running); sets the unit's fields, and the job's
# (ARGV[9], JSON) if the job is still queued or running; with ARGV[6] = '1'
# marks the unit for publishing again.
# KEYS[1] job, [2] active units, [3] requeued units; ARGV[1] retention, [2] unit,
# [3] member, [4] attempt number, [5] outcome, [6] requeue, [7] running only,
# [8] unit fields (JSON), [9] job fields (JSON), [10] now. Returns 1 if applied.
END_UNIT_LUA = END_ATTEMPT_LUA + """
local unit = ARGV[2]
if redis.call('HGET', KEYS[1], unit .. 'attempt') ~= ARGV[4] then return 0 end
if ARGV[7] == '1' and redis.call('HGET', KEYS[1], unit .. 'state') ~= 'running' then return 0 end
end_attempt(ARGV[4], ARGV[5], ARGV[10])
redis.call('SREM', KEYS[2], ARGV[3])
if ARGV[6] == '1' then redis.call('ZADD', KEYS[3], ARGV[10], ARGV[3]) end
for name, value in pairs(cjson.decode(ARGV[8])) do redis.call('HSET', KEYS[1], name, value) end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'running' then
  for name, value in pairs(cjson.decode(ARGV[9])) do redis.call('HSET', KEYS[1], name, value) end
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[10])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# The recovery claim: a running unit whose worker's presence has lapsed (or,
# with ARGV[6], whose attempt ARGV[6] is known dead by its own worker ARGV[7])
# is put back, exactly once however many workers try: its attempt ends as
# 'worker lost' and the unit is marked to be published again.
# KEYS[1] job, [2] active units, [3] requeued units; ARGV[1] retention, [2] unit,
# [3] member, [4] now, [5] worker key prefix, [6] attempt number or '', [7] worker.
# Returns {1 requeued / 2 ended (the job is over) / 0 not claimed, attempt number, worker}.
RECOVER_UNIT_LUA = END_ATTEMPT_LUA + """
local unit = ARGV[2]
if redis.call('HGET', KEYS[1], unit .. 'state') ~= 'running' then
  redis.call('SREM', KEYS[2], ARGV[3])
  return {0, 0, ''}
end
local owner = redis.call('HGET', KEYS[1], unit .. 'worker') or ''
local number = redis.call('HGET', KEYS[1], unit .. 'attempt')
local own_dead = ARGV[6] ~= '' and number == ARGV[6] and owner == ARGV[7]
if redis.call('EXISTS', ARGV[5] .. owner) == 1 and not own_dead then return {0, 0, ''} end
end_attempt(number, 'worker lost', ARGV[4])
redis.call('SREM', KEYS[2], ARGV[3])
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('EXPIRE', KEYS[1], ARGV[1])
if unit ~= '' and state ~= 'running' then
  redis.call('HSET', KEYS[1], unit .. 'state', 'done')  -- the job ended meanwhile: nothing to run again
  return {2, number, owner}
end
redis.call('HSET', KEYS[1], unit .. 'state', 'queued', 'updated_at', ARGV[4])
if unit == '' then redis.call('HSET', KEYS[1], 'error', 'requeued: worker ' .. owner .. ' lost') end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
return {1, number, owner}
"""

# A unit marked for publishing longer ago than ARGV[2] (its recoverer died before
# it published): claimed again for publishing, by one worker. KEYS[1] requeued
# units; ARGV[1] member, [2] cutoff, [3] now. Returns 1 if claimed.
RECLAIM_REQUEUE_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# Sets fields of a job only if it is in one of the given states, atomically, so
# a worker starting a job and a user cancelling it cannot both win.
# With a fence (ARGV[3] = attempt number), only if that attempt is still the whole job's.
# KEYS[1] job; ARGV[1] retention; ARGV[2] allowed states, space separated; ARGV[3] fence or '';
# ARGV[4..] field, value. Returns {1 if applied else 0, the state it was in ('' if there is no such job)}.
TRANSITION_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, ''} end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. state .. ' ', 1, true) then return {0, state} end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[3] then return {0, 'fenced'} end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {1, state}
"""

# A segment's progress: its own frame count, and the job's as the sum over its segments.
# KEYS[1] job; ARGV[1] retention; ARGV[2] segment index; ARGV[3] frames done; ARGV[4] now;
# ARGV[5] the segment's attempt number.
# Returns {frames done in all segments, 0 go on / 1 stop (cancelled, or the job ended) / 2 fenced}.
SEGMENT_PROGRESS_LUA = """
if redis.call('HGET', KEYS[1], 'segment:' .. ARGV[2] .. ':attempt') ~= ARGV[5] then return {0, 2} end
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


def segment_unit(index: int) -> str:
    return f"segment:{index}:"


@dataclass(frozen=True)
class Attempt:
    """One start of one unit of a job; `number` is its fence token."""

    job_id: str
    unit: str
    number: int

    @property
    def member(self) -> str:
        return unit_member(self.job_id, self.unit)

    @property
    def partial_token(self) -> str:
        """Names the attempt's temporary file: two attempts never write the same one."""
        return f"{self.job_id}-{self.number}"


def unit_member(job_id: str, unit: str) -> str:
    return f"{job_id}|{unit}"


def parse_member(member: str) -> tuple[str, str]:
    job_id, _, unit = member.partition("|")
    return job_id, unit


@dataclass
class Job:
    """One stylization or upscaling job, or one training (`task` in TRAINING_TASKS: `input` is the
    folder of photos, `style` the name it is published under, `output` its weights in the fleet's
    styles folder). Paths are relative to the storage root, which each client and worker mounts
    wherever it likes (VIDSTYLE_STORAGE)."""

    id: str
    input: str
    output: str
    style: str  # an installed style's name; "" for an upscale or a painting
    queue: str
    codec: str
    crf: int
    preset: str
    batch_size: int = 0  # 0: the pipeline picks one for the worker's device
    # "style": its style, then an upscale by `factor` where that is set; "upscale": by `factor` alone.
    task: str = STYLE_TASK
    factor: int = 0  # the upscale factor (an installed upscaler); 0: none
    # Any painting instead of a style: its copy under the storage root (vidstyle.workers.client.store_painting).
    painting: str = ""
    painting_name: str = ""  # the file's name as the user gave it, for output names and listings
    # Split a long video over several workers: "auto" (from its length and the
    # live workers), "off", or about this many seconds per segment.
    segment_seconds: str = AUTO
    segments: int = 0  # how many it was split into; 0: one task stylizes it whole
    temporal_strength: float = 0.0  # vidstyle.temporal's blend, as submitted (0: off)
    sequence_fps: str = ""  # an image-sequence input's frame rate, "24000/1001" say ("": vidstyle.formats' default)
    strength: float = 1.0  # the artist's controls (vidstyle.inference.Controls)
    preserve_colors: bool = False
    network: str = "auto"  # a style's network: vidstyle.model.NETWORKS, chosen again on the worker
    join_seconds: float = 0.0  # how long joining the segments took
    # A training's settings (JSON: vidstyle.trainer.config.TrainConfig's fields that define the run),
    # its VGG-16 weights under the storage root ("": the worker's VIDSTYLE_VGG_WEIGHTS), whether it
    # may replace a published style of its name (submit --force), and its progress.
    recipe: str = ""
    vgg_weights: str = ""
    replace: bool = False
    iteration: int = 0
    iterations: int = 0
    losses: str = ""  # JSON: the loss terms of the last iteration reported
    iterations_per_second: float = 0.0
    sample: str = ""  # the latest sample grid, under the storage root
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
        return cls(**{name: _parse(types[name], value, name, f"job {record.get('id', '?')}")
                      for name, value in record.items() if name in types})

    @property
    def is_training(self) -> bool:
        return self.task in TRAINING_TASKS

    @property
    def done_and_total(self) -> tuple[int, int]:
        """Its progress: iterations of a training, frames of any other job."""
        return (self.iteration, self.iterations) if self.is_training else (self.frames_done, self.frames_total)

    @property
    def treatment(self) -> str:
        """What it does to each frame, as output names say it: udnie, x4, udnie.x4 (a painting by its file's
        stem); for a training, what it makes: train NAME."""
        if self.is_training:
            return f"{self.task} {self.style}"
        style = self.style or Path(self.painting_name).stem
        return ".".join(filter(None, (style, f"x{self.factor}" if self.factor else "")))

    def to_record(self) -> dict[str, str]:
        return {name: _format(value) for name, value in dataclasses.asdict(self).items()}

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        for name in ("recipe", "losses"):  # JSON in the record, objects to a reader of JSON
            fields[name] = _json_object(fields[name])
        return fields


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _parse(type_name: str, value: str, name: str, record: str) -> object:
    """A field as stored, in its type; a value that is not one (anyone with the password can write
    a record) is a one-line error naming it."""
    if type_name == "bool":
        return value == "1"
    try:
        return {"int": int, "float": float}.get(type_name, str)(value)
    except ValueError:
        raise VidstyleError(f"{record}: its {name} is '{value[:40]}', not a number") from None


def _format(value: object) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def _json_fields(fields: dict | None) -> str:
    # An empty Lua table encodes as an object either way; values are stored as strings.
    return json.dumps({name: _format(value) for name, value in (fields or {}).items()}) if fields else "{}"


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


def retention_seconds() -> int:
    return max(1, round(seconds("VIDSTYLE_JOB_RETENTION")))


def worker_lapse_seconds() -> float:
    """How long a worker's presence outlives its last heartbeat: past it, its jobs are taken over."""
    return seconds("VIDSTYLE_WORKER_LAPSE")


def recovery_interval_seconds() -> float:
    """How often each worker looks for units of lapsed workers."""
    return seconds("VIDSTYLE_RECOVERY_INTERVAL")


class JobStore:
    """Job records and worker heartbeats in one Redis database."""

    def __init__(self, client: redis.Redis, retention: int | None = None):
        self.redis = client
        self.retention = retention_seconds() if retention is None else retention
        self._transition = client.register_script(TRANSITION_LUA)
        self._segment_progress = client.register_script(SEGMENT_PROGRESS_LUA)
        self._start_unit = client.register_script(START_UNIT_LUA)
        self._end_unit = client.register_script(END_UNIT_LUA)
        self._recover_unit = client.register_script(RECOVER_UNIT_LUA)
        self._reclaim_requeue = client.register_script(RECLAIM_REQUEUE_LUA)

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
        """The newest jobs first, optionally only those in `states`; forgets expired ones. A record that
        is not a job (written by hand, or by another version) is skipped with a warning naming it."""
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
                    try:
                        jobs.append(Job.from_record(record))
                    except VidstyleError as exc:  # one garbled record must not hide every other job
                        log.warning(str(exc))
        if gone:
            self.redis.zrem(JOB_INDEX, *gone)
        return jobs[:limit]

    def transition(self, job_id: str, from_states: tuple[str, ...], fence: Attempt | None = None,
                   **fields: object) -> tuple[bool, str]:
        """Set `fields` if the job is in one of `from_states` (and, with `fence`, that
        attempt is still the whole job's): (applied, the state it was in, or 'fenced')."""
        fields["updated_at"] = time.time()
        args = [self.retention, " ".join(from_states), fence.number if fence else ""]
        for name, value in fields.items():
            args += [name, _format(value)]
        applied, state = self._transition(keys=[JOB_PREFIX + job_id], args=args)
        return bool(applied), state

    # -- attempts -----------------------------------------------------------

    def start_unit(self, job_id: str, unit: str, worker: str, pid: int, message: dict,
                   own_dead_pid: int | None = None) -> tuple[Attempt | None, str]:
        """Start a unit as a new attempt: (the attempt, '') or (None, why it is not to run:
        'gone', a final state, 'split', 'stopped' (the job ended), 'done', 'running elsewhere').
        A unit still marked running on a worker whose presence lapsed, or on this worker's
        `own_dead_pid`, is taken over (its attempt ends as 'worker lost')."""
        number, why = self._start_unit(
            keys=[JOB_PREFIX + job_id, ACTIVE_UNITS],
            args=[self.retention, unit, unit_member(job_id, unit), worker, pid, time.time(), json.dumps(message),
                  WORKER_PREFIX, "" if own_dead_pid is None else own_dead_pid])
        return (Attempt(job_id, unit, int(number)), "") if number else (None, why)

    def unit_fields(self, job_id: str, unit: str) -> dict[str, str]:
        """A unit's state, worker, pid, attempt and message, as stored."""
        names = ["state", "worker", "pid", "attempt", "message"]
        return dict(zip(names, self.redis.hmget(JOB_PREFIX + job_id, [unit + name for name in names])))

    def end_unit(self, attempt: Attempt, outcome: str, *, requeue: bool = False, running_only: bool = True,
                 unit_fields: dict | None = None, job_fields: dict | None = None) -> bool:
        """End `attempt` with `outcome` if it is still its unit's current one: set the unit's
        fields, and the job's if the job is still queued or running. False: fenced."""
        applied = self._end_unit(
            keys=[JOB_PREFIX + attempt.job_id, ACTIVE_UNITS, REQUEUED_UNITS],
            args=[self.retention, attempt.unit, attempt.member, attempt.number, outcome, "1" if requeue else "",
                  "1" if running_only else "", _json_fields(unit_fields), _json_fields(job_fields), time.time()])
        return bool(applied)

    def is_current(self, attempt: Attempt) -> bool:
        """Whether `attempt` still owns its unit of a running job (one atomic read)."""
        number, unit_state, state = self.redis.hmget(
            JOB_PREFIX + attempt.job_id, [attempt.unit + "attempt", attempt.unit + "state", "state"])
        return number == str(attempt.number) and unit_state == RUNNING and state == RUNNING

    def attempt_history(self, job_id: str) -> list[dict]:
        """Every attempt of every unit, in the order they started."""
        record = self.redis.hgetall(JOB_PREFIX + job_id)
        found = [(int(k.split(":")[1]), json.loads(v)) for k, v in record.items() if re.fullmatch(r"attempt:\d+", k)]
        return [{"number": number, **attempt} for number, attempt in sorted(found)]

    # -- recovery -----------------------------------------------------------

    def active_units(self) -> list[str]:
        return sorted(self.redis.smembers(ACTIVE_UNITS))

    def recover_unit(self, member: str, own_dead_attempt: int | None = None, worker: str = "") -> tuple[int, int, str]:
        """Claim a running unit whose worker's presence has lapsed (or whose attempt
        `own_dead_attempt` its own `worker` knows dead): (1 put back / 2 ended with its
        job / 0 not claimed, the lost attempt's number, its worker)."""
        job_id, unit = parse_member(member)
        claimed, number, owner = self._recover_unit(
            keys=[JOB_PREFIX + job_id, ACTIVE_UNITS, REQUEUED_UNITS],
            args=[self.retention, unit, member, time.time(), WORKER_PREFIX,
                  "" if own_dead_attempt is None else own_dead_attempt, worker])
        return int(claimed), int(number or 0), owner

    def stale_requeues(self, older_than: float) -> list[str]:
        """Units marked for publishing more than `older_than` seconds ago: their recoverer died."""
        return self.redis.zrangebyscore(REQUEUED_UNITS, "-inf", time.time() - older_than)

    def reclaim_requeue(self, member: str, older_than: float) -> bool:
        now = time.time()
        return bool(self._reclaim_requeue(keys=[REQUEUED_UNITS], args=[member, now - older_than, now]))

    def requeue_published(self, member: str) -> None:
        self.redis.zrem(REQUEUED_UNITS, member)

    # -- progress -----------------------------------------------------------

    def report_progress(self, attempt: Attempt, done: int, total: int, fps: float, eta_seconds: float) -> str:
        """Record progress of a running job: 'go', 'stop' (cancel requested, or the job
        ended) or 'fenced' (a newer attempt owns it)."""
        return self._report(attempt, frames_done=done, frames_total=total, fps=round(fps, 2),
                            eta_seconds=round(eta_seconds, 1))

    def report_training(self, attempt: Attempt, iteration: int, iterations: int, losses: dict[str, float],
                        iterations_per_second: float, eta_seconds: float, sample: str) -> str:
        """Record progress of a running training, as report_progress does a job's frames."""
        return self._report(attempt, iteration=iteration, iterations=iterations, losses=json.dumps(losses),
                            iterations_per_second=round(iterations_per_second, 3),
                            eta_seconds=round(eta_seconds, 1), sample=sample)

    def _report(self, attempt: Attempt, **fields: object) -> str:
        applied, state = self.transition(attempt.job_id, (RUNNING,), fence=attempt, **fields)
        if state == "fenced":
            return "fenced"
        if not applied or self.redis.hget(JOB_PREFIX + attempt.job_id, "cancel_requested") == "1":
            return "stop"
        return "go"

    def split(self, attempt: Attempt, segments: int, frames_total: int, spans: list) -> bool:
        """Record that a running job is split, once (a late copy of its first message
        finds it split and is dropped); False if `attempt` was fenced."""
        # The whole-job attempt ends here: from now on its segments and their join are run.
        return self.end_unit(attempt, SPLIT, unit_fields={"split": 1, "segments": segments, "frames_total": frames_total,
                                                          "frames_done": 0, "spans": json.dumps(spans)})

    def report_segment_progress(self, attempt: Attempt, index: int, done: int) -> str:
        """Record a segment's frames done (the job's are their sum): 'go', 'stop' or 'fenced'."""
        _, code = self._segment_progress(keys=[JOB_PREFIX + attempt.job_id],
                                         args=[self.retention, index, done, time.time(), attempt.number])
        return ("go", "stop", "fenced")[code]

    def segment_workers(self, job_id: str) -> dict[int, str]:
        """Which worker ran (or runs) each segment of a split job."""
        record = self.redis.hgetall(JOB_PREFIX + job_id)
        return {int(key.split(":")[1]): value for key, value in record.items()
                if key.startswith("segment:") and key.endswith(":worker")}

    def finish(self, job_id: str, state: str, error: str = "") -> None:
        """End a job that no attempt runs (cancelled while queued, or a failure seen
        outside its attempt, as a hard time limit is)."""
        self.transition(job_id, (QUEUED, RUNNING), state=state, error=error, finished_at=time.time(), eta_seconds=0.0)

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
        self.redis.pipeline().hset(key, mapping=fields).pexpire(key, round(ttl * 1000)).execute()

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
            fields = {k: _parse(types[k], v, k, f"worker {record['name']}") for k, v in record.items()
                      if k in types and k != "jobs"}
            workers.append(WorkerInfo(**fields, jobs=jobs))
        return workers
