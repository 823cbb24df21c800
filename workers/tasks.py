"""The tasks: a job, run by the same `stylize_file` as the embedded mode, whole
or split into segments over several workers.

The message carries only the job id; everything else is in the job record,
which the worker checks again by its own rules before it touches a file
(vidstyle.workers.job_checks): an output is created, never written over an existing file.

A long job is split by its first task into keyframe-aligned segments: a Celery
chord of one task per segment (any worker on the job's queue takes them) whose
callback joins the segment files into the output without re-encoding. The
segment files live in a hidden folder beside the output, removed when the job
ends in any way.

Each start of a task is an attempt (vidstyle.workers.jobs): its temporary file is named
after it, and its progress, its final rename and its outcome count only while
it is its unit's current attempt. A message that comes again for a unit that is
done or running on a live worker is dropped (celery's Ignore: no result, so a
chord never counts a segment twice). Units of a worker that died are put back
by the others (vidstyle.workers.heartbeat, `recover_lost_units`).
"""
from __future__ import annotations

import errno
import functools
import glob
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis
from celery import Task, chord, signals
from celery.exceptions import Ignore, SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError

from vidstyle import formats
from vidstyle.settings import setting
from vidstyle.errors import VidstyleError
from vidstyle.inference import Controls, Stylizer, compile_warm_sizes, resolve_device, warm_sizes
from vidstyle.workers.jobs import (AUTO, CANCELLED, FAILED, JOIN, PREEMPTED, QUEUED, RUNNING, SUCCEEDED, WHOLE_JOB, Attempt,
                           Job, JobStore, parse_member, segment_unit, worker_lapse_seconds)
from vidstyle.media import EncodeOptions, Span, is_image, partial_file, partial_path, probe_video
from vidstyle.pipeline import stylize_file
from vidstyle.segments import join_segments, plan_spans
from vidstyle.styles import Painting, Treatment, find_treatment
from vidstyle.workers.celery import app
from vidstyle.workers.broker import to_front
from vidstyle.workers.celeryconfig import JOIN_TASK_NAME, SEGMENT_TASK_NAME, TASK_NAME, TRAIN_TASK_NAME
from vidstyle.workers.identity import worker_id
from vidstyle.workers.job_checks import check_new_output, check_span, checked_paths
from vidstyle.workers.storage import resolve_in_storage, storage_root

PROGRESS_INTERVAL_SECONDS = 1 / 3  # job record updates: a few a second, whatever the frame rate
STYLIZER_CACHE_SIZE = 2  # networks kept per pool process; each is small, its compiled graphs are not

# Worth another attempt: the broker, the job store or the shared filesystem
# hiccuped. Bad input never gets here: the pipeline reports it as VidstyleError.
TRANSIENT_ERRORS = (OSError, redis.ConnectionError, redis.TimeoutError, OperationalError)
# OSErrors that a retry would only repeat.
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# How a job's task is retried after a transient error, and which failures are expected (logged without a traceback).
RETRIED_TASK = {"throws": (VidstyleError, SoftTimeLimitExceeded), "autoretry_for": TRANSIENT_ERRORS,
                "dont_autoretry_for": PERMANENT_OS_ERRORS, "retry_backoff": 5, "retry_backoff_max": 300,
                "retry_jitter": True, "max_retries": 5}

logger = logging.getLogger(__name__)

# What a worker does with its running job on SIGTERM (VIDSTYLE_ON_TERM, `vidstyle worker --on-term`):
# finish it (a planned stop), or stop it at its next batch and hand it back at once (a spot node's notice).
ON_TERM_FINISH, ON_TERM_REQUEUE = "finish", "requeue"


class SignalFlag:
    """A flag a signal handler sets. Not a threading.Event: its set() takes a lock, and a second
    SIGTERM arriving while clear() holds that lock deadlocked the pool process against itself."""

    def __init__(self) -> None:
        self._raised = False

    def set(self) -> None:
        self._raised = True

    def clear(self) -> None:
        self._raised = False

    def is_set(self) -> bool:
        return self._raised


preempted = SignalFlag()  # set by SIGTERM in a pool process under --on-term requeue
running_attempts: dict[str, Attempt] = {}  # task id -> its attempt, in this pool process


def on_term_setting() -> str:
    value = setting("VIDSTYLE_ON_TERM") or ON_TERM_FINISH
    if value not in (ON_TERM_FINISH, ON_TERM_REQUEUE):
        raise VidstyleError(f"VIDSTYLE_ON_TERM must be {ON_TERM_FINISH} or {ON_TERM_REQUEUE}, not '{value}'")
    return value


def _hand_back_on_term() -> None:
    """In a pool process, under --on-term requeue: SIGTERM stops the job at its next batch.
    Installed when a job starts, since billiard sets its own handlers after Celery's start-up hooks."""
    if on_term_setting() == ON_TERM_REQUEUE and signal.getsignal(signal.SIGTERM) is not _preempt:
        signal.signal(signal.SIGTERM, _preempt)


def _preempt(*_) -> None:
    preempted.set()


class AttemptEnded(Exception):
    """Raised from the progress callback: the pipeline stops and removes its partial output."""


class JobCancelled(AttemptEnded):
    """The user cancelled the job, or it ended otherwise (another segment failed)."""


class JobPreempted(AttemptEnded):
    """SIGTERM under --on-term requeue: the job goes back to the queue."""


class AttemptFenced(AttemptEnded):
    """Another attempt owns the unit now, or this one lost the job store for longer
    than a worker's presence lasts (it would be taken over): its work is discarded."""


class AttemptReporter:
    """One attempt's progress to the job record, at a bounded rate, and what the record says back:
    JobCancelled when the user cancels the job (or it ended otherwise), AttemptFenced when another
    attempt owns it. Also the check before the final rename (`before_commit`)."""

    def __init__(self, store: JobStore, attempt: Attempt) -> None:
        self.store, self.attempt = store, attempt
        self.started = self.last_contact = time.monotonic()
        self.last_report = float("-inf")
        self.lapse = worker_lapse_seconds()

    def due(self, now: float, last: bool) -> bool:
        """Whether to report now: a few times a second, and always the `last` step."""
        if now - self.last_report < PROGRESS_INTERVAL_SECONDS and not last:
            return False
        self.last_report = now
        return True

    def send(self, report: Callable[[], str]) -> None:
        """Run `report` (a JobStore report: 'go', 'stop' or 'fenced') and act on its verdict."""
        try:
            verdict = report()
        except redis.RedisError as exc:
            if time.monotonic() - self.last_contact > self.lapse:
                raise AttemptFenced(f"job store unreachable for more than {self.lapse:g} s ({exc})") from exc
            logger.warning("job %s: progress not recorded: %s", self.attempt.job_id, exc)
            return
        self.last_contact = time.monotonic()
        if verdict == "fenced":
            raise AttemptFenced("another worker took it over")
        if verdict == "stop":
            raise JobCancelled

    def before_commit(self) -> None:
        if not self.store.is_current(self.attempt):
            raise AttemptFenced("another worker took it over before the output was renamed into place")


class JobProgress(AttemptReporter):
    """The pipeline's on_progress callback for one attempt of a job, or of one segment: frames,
    fps and ETA to the job record, and a stop when the user cancels the job (or another segment
    failed), when the worker is preempted, or when the attempt is fenced."""

    def __init__(self, store: JobStore, attempt: Attempt, segment: int | None = None) -> None:
        super().__init__(store, attempt)
        self.segment = segment
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if preempted.is_set():
            raise JobPreempted
        now = time.monotonic()
        self.done = done
        # (The last batch of a known total is always reported; 0 is an unknown total, see complete.)
        if not self.due(now, last=bool(total) and done >= total):
            return
        if self.segment is not None:
            self.send(lambda: self.store.report_segment_progress(self.attempt, self.segment, done))
        else:
            fps = done / max(now - self.started, 1e-6)
            self.send(lambda: self.store.report_progress(self.attempt, done, total, fps,
                                                         (total - done) / fps if fps and total else 0.0))

    def complete(self) -> None:
        """The job ran to its end: the frames done are the total (which MKV or WebM do not state before)."""
        fps = self.done / max(time.monotonic() - self.started, 1e-6)
        self.store.report_progress(self.attempt, self.done, self.done, fps, 0.0)


@signals.worker_process_init.connect
def compile_warm_sizes_here(**_: object) -> None:
    """Before its first job, a pool process compiles the warm sizes (VIDSTYLE_WARM_SIZES), loading them
    from the cache `vidstyle worker` filled: a job of one of these sizes then runs compiled at once,
    whatever its style (one compiled graph serves every style's network)."""
    try:
        compile_warm_sizes(warm_sizes(), setting("VIDSTYLE_DEVICE"))
    except Exception as exc:  # jobs still run (compiling when it pays): the process must start
        logging.getLogger(__name__).warning(f"warm sizes not compiled: {exc}")


@functools.lru_cache(maxsize=STYLIZER_CACHE_SIZE)
def _cached_stylizer(style_path: Path | None, upscaler_path: Path | None, painting_path: Path | None,
                     modified_ns: tuple[int, ...], device: str) -> Stylizer:
    """Keyed by the files and their mtimes too, so a retrained style is reloaded."""
    treatment = find_treatment(style_path and str(style_path), upscaler_path and str(upscaler_path), painting_path)
    return Stylizer(treatment.load_network(), resolve_device(device))


def job_treatment(job: Job, root: Path) -> Treatment:
    """A job's style or painting and upscale factor, as installed on this worker; the painting is read
    now (a copy that vanished from the storage root fails the job with that line)."""
    painting = resolve_in_storage(job.painting, root) if job.painting else None
    return find_treatment(job.style or None, str(job.factor) if job.factor else None, painting, job.network)


def stylizer_for(job: Job, root: Path) -> Stylizer:
    treatment = job_treatment(job, root)
    painting_path = treatment.style.path if isinstance(treatment.style, Painting) else None
    style_path = None if treatment.style is None or painting_path else treatment.style.weights_path
    upscaler_path = treatment.upscaler and treatment.upscaler.weights_path
    modified = tuple(path.stat().st_mtime_ns for path in [*treatment.weights_paths, *filter(None, [painting_path])])
    return _cached_stylizer(style_path, upscaler_path, painting_path, modified,
                            str(resolve_device(setting("VIDSTYLE_DEVICE"))))


def job_controls(job: Job) -> Controls:
    return Controls(strength=job.strength, preserve_colors=job.preserve_colors)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, VidstyleError):
        return str(exc)
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        return f"took longer than the job time limit ({app.conf.task_time_limit:.0f} s, VIDSTYLE_JOB_TIME_LIMIT)"
    return f"{type(exc).__name__}: {exc}"


def final_fields(state: str, error: str = "") -> dict:
    return {"state": state, "error": error, "finished_at": time.time(), "eta_seconds": 0.0}


def _unit_done(attempt: Attempt) -> dict:
    return {attempt.unit + "state": "done"} if attempt.unit else {}


class JobTask(Task):
    """Keeps the job record in step with Celery's view of the task."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if _fail_quietly(task_id, args[0], self.failure_reason(exc, args)) and self.name in (SEGMENT_TASK_NAME,
                                                                                              JOIN_TASK_NAME):
            _remove_segments_quietly(args[0])  # the job is split

    def failure_reason(self, exc: BaseException, args: tuple) -> str:
        return failure_reason(exc)

    def after_return(self, status, retval, task_id, args, kwargs, einfo) -> None:
        running_attempts.pop(task_id, None)


class SegmentTask(JobTask):
    """A segment that fails for good fails its job: the other segments stop at
    their next batch (the job is no longer running) and the files go."""

    def failure_reason(self, exc: BaseException, args: tuple) -> str:
        return f"segment {args[1]}: {failure_reason(exc)}"


def _fail_quietly(task_id: str, job_id: str, reason: str) -> bool:
    """Fail the job from its failed attempt (seen outside one, as a hard time limit
    is in the worker's main process: unfenced); the store may be what failed."""
    try:
        store = JobStore.from_settings()
        attempt = running_attempts.get(task_id)
        if attempt is None:
            store.finish(job_id, FAILED, reason)
            return True
        # Not only while running: a job whose retries ran out was queued by its last attempt.
        return store.end_unit(attempt, "failed", running_only=False, unit_fields=_unit_done(attempt),
                              job_fields=final_fields(FAILED, reason))
    except redis.RedisError as exc:
        logger.warning("job %s: record not updated: %s", job_id, exc)
        return False


def begin_attempt(task: Task, store: JobStore, job_id: str, unit: str) -> tuple[Attempt | None, str]:
    """Start this task's unit as a new attempt, or say why it is not to run."""
    _hand_back_on_term()
    worker, pid = worker_id(), os.getpid()
    fields = store.unit_fields(job_id, unit)
    own_dead_pid = None
    if fields["worker"] == worker and fields["state"] == RUNNING and fields["pid"]:
        # This worker's own earlier attempt: its pool process died, or this process ran it and lost track.
        previous = int(fields["pid"])
        if previous == pid or not _process_alive(previous):
            own_dead_pid = previous
    request = task.request
    message = {"name": task.name, "args": list(request.args), "id": request.id, "group": request.group,
               "group_index": request.group_index, "chord": request.chord}
    attempt, why = store.start_unit(job_id, unit, worker, pid, message, own_dead_pid)
    if attempt is not None:
        running_attempts[request.id] = attempt
    else:
        logger.info("job %s: %s not run (%s)", job_id, unit.rstrip(":") or "job", why)
    return attempt, why


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_attempt(task: Task, store: JobStore, attempt: Attempt, job: Job, work: Callable[[], str],
                on_cancel: Callable[[], str], requeued: Callable[[str], dict]) -> str:
    """Run `work` as `attempt` and record how it ended. `requeued(reason)` gives
    the end_unit arguments that put the unit back on the queue."""
    try:
        return work()
    except JobCancelled:
        return on_cancel()
    except JobPreempted:
        preempted.clear()  # (Celery's own SIGTERM, on a lost broker connection, leaves the process serving)
        # Marked for publishing in the same step, so a worker dying right here is covered too.
        if store.end_unit(attempt, PREEMPTED, requeue=True, **requeued(f"requeued: {worker_id()} preempted")):
            publish_unit(store, attempt.member)
        raise Ignore()
    except AttemptFenced as exc:
        logger.warning("job %s: attempt %d stopped: %s", attempt.job_id, attempt.number, exc)
        raise Ignore()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise VidstyleError(f"no space left on the storage while writing {job.output}") from exc
        if not isinstance(exc, PERMANENT_OS_ERRORS):
            _requeue_for_retry(store, attempt, requeued, exc)
        raise
    except TRANSIENT_ERRORS as exc:
        _requeue_for_retry(store, attempt, requeued, exc)
        raise  # autoretry_for publishes the retry, after the unit is queued again


def _requeue_for_retry(store: JobStore, attempt: Attempt, requeued: Callable[[str], dict], exc: BaseException) -> None:
    reason = f"retrying after: {failure_reason(exc)}"
    try:
        store.end_unit(attempt, reason, **requeued(reason))
    except redis.RedisError as error:  # the store is what failed: the next start takes the attempt over
        logger.warning("job %s: record not updated: %s", attempt.job_id, error)


def publish_unit(store: JobStore, member: str) -> None:
    """Publish again the message of a unit put back on its queue (by a recovery or a preemption)."""
    job_id, unit = parse_member(member)
    fields, job = store.unit_fields(job_id, unit), store.find(job_id)
    message = json.loads(fields["message"] or "{}")
    if job is not None and fields["state"] == QUEUED and "name" in message:
        app.send_task(message["name"], args=message["args"], task_id=message["id"], queue=job.queue,
                      group_id=message["group"], group_index=message["group_index"], chord=message["chord"])
        to_front(job.queue, message["id"])  # it waited long enough: before the jobs queued since
    store.requeue_published(member)


def unit_of_message(name: str, args: list) -> tuple[str, str] | None:
    """The (job id, unit) a task message runs."""
    if name in (TASK_NAME, TRAIN_TASK_NAME):
        return args[0], WHOLE_JOB
    if name == SEGMENT_TASK_NAME:
        return args[0], segment_unit(args[1])
    if name == JOIN_TASK_NAME:
        return args[0], JOIN
    return None


def unit_waits(store: JobStore, name: str, args: list) -> bool:
    """Whether the unit a message runs is still to run: its job wanted, the unit neither running nor done."""
    unit = unit_of_message(name, args)
    if unit is None:
        return False
    try:
        job = store.find(unit[0])
    except VidstyleError:  # a damaged record must not stop the scan; its message waits out the visibility timeout
        return False
    if job is None:
        return False
    state = store.unit_fields(*unit)["state"]
    if unit[1] == WHOLE_JOB:
        return state == QUEUED and not job.cancel_requested
    return job.state == RUNNING and state in (None, QUEUED)


def unit_output(job: Job, unit: str, root: Path) -> Path:
    """Where a unit writes: the output for the whole job and the join, a segment file for a segment."""
    output_path = resolve_in_storage(job.output, root)
    if unit.startswith("segment:"):
        return _segment_path(output_path, job, int(unit.split(":")[1]))
    return output_path


def remove_partials(job: Job, unit: str, root: Path, number: int | str = "*") -> None:
    """Remove the temporary files of the unit's attempts (all, or attempt `number`'s),
    left by attempts that died or were cut off."""
    output = unit_output(job, unit, root)
    before, after = partial_path(output, f"{job.id}-\0").name.split("\0")
    for partial in output.parent.glob(glob.escape(before) + str(number) + glob.escape(after)):
        partial.unlink(missing_ok=True)


def start_whole_job(task: Task, job_id: str) -> tuple[JobStore, Attempt, Job]:
    """Start a whole job as a new attempt, or drop its message: the job is cancelled (ended so here if
    that was asked after it started before), finished, expired, split already, or running on a live worker."""
    store = JobStore.from_settings()
    attempt, _ = begin_attempt(task, store, job_id, WHOLE_JOB)
    if attempt is None:
        raise Ignore()
    job = store.get(job_id)
    if job.cancel_requested:
        end_cancelled(store, attempt)
        raise Ignore()
    return store, attempt, job


def end_cancelled(store: JobStore, attempt: Attempt) -> str:
    store.end_unit(attempt, CANCELLED, job_fields=final_fields(CANCELLED))
    return CANCELLED


def run_whole_job(task: Task, store: JobStore, attempt: Attempt, job: Job, work: Callable[[], str]) -> str:
    """Run a whole job's `work` as `attempt`, shown as this worker's current job: a cancel ends it as
    cancelled, a requeue puts it back on the queue."""
    store.set_current_job(worker_id(), os.getpid(), job.id)
    try:
        return run_attempt(task, store, attempt, job, work, functools.partial(end_cancelled, store, attempt),
                           lambda reason: {"job_fields": {"state": QUEUED, "error": reason}})
    finally:
        store.set_current_job(worker_id(), os.getpid(), None)


def before_commit(progress: JobProgress, output_path: Path, name: str) -> None:
    """Just before the rename into place: the attempt still owns its unit, and nothing took the output's name."""
    progress.before_commit()
    check_new_output(output_path, name)


@app.task(bind=True, base=JobTask, name=TASK_NAME, **RETRIED_TASK)
def stylize(self: Task, job_id: str) -> str:
    store, attempt, job = start_whole_job(self, job_id)
    root = storage_root()
    input_path, output_path = checked_paths(job, root)
    remove_partials(job, WHOLE_JOB, root)  # of earlier attempts that died
    job_treatment(job, root)  # an unknown style or factor, or a bad painting, fails first, whatever the input
    spans = _plan(job, input_path, store)
    if len(spans) > 1:
        bounds = [[span.start, span.end, span.frames] for span in spans]
        if store.split(attempt, len(spans), sum(span.frames for span in spans), bounds):
            _start_segments(job, bounds, output_path)
        return "split"

    def work() -> str:
        progress = JobProgress(store, attempt)
        stylize_file(input_path, output_path, stylizer_for(job, root), batch_size=job.batch_size or None,
                     encode=EncodeOptions(codec=job.codec, crf=job.crf, preset=job.preset),
                     on_progress=progress, partial_token=attempt.partial_token,
                     before_commit=functools.partial(before_commit, progress, output_path, job.output),
                     temporal_strength=job.temporal_strength, sequence_fps=formats.parse_fps(job.sequence_fps),
                     controls=job_controls(job))
        progress.complete()
        store.end_unit(attempt, SUCCEEDED, job_fields=final_fields(SUCCEEDED))
        return SUCCEEDED

    return run_whole_job(self, store, attempt, job, work)


def _plan(job: Job, input_path: Path, store: JobStore) -> list[Span]:
    """The job's segments: none (not split) unless it is a video long enough to share."""
    if job.segment_seconds == "off" or is_image(input_path) or not input_path.is_file():
        return []  # (a missing input fails in stylize_file, with the pipeline's message; a sequence is no file)
    if formats.is_sequence(Path(job.output)):
        return []  # segments are joined into one file
    probe_video(input_path)  # bad input fails here, with the pipeline's message
    if job.segment_seconds == AUTO:
        workers = sum(job.queue in w.queues.split(",") for w in store.live_workers())
        return plan_spans(input_path, workers=workers)
    return plan_spans(input_path, float(job.segment_seconds))


def _start_segments(job: Job, bounds: list[list[int | None]], output_path: Path) -> None:
    """A chord: one task per segment, then the join once all have ended."""
    segment_dir(output_path, job.id).mkdir(exist_ok=True)
    segments = [stylize_segment.si(job.id, index, *span).set(queue=job.queue) for index, span in enumerate(bounds)]
    chord(segments)(join_segments_task.si(job.id, bounds).set(queue=job.queue))


def segment_dir(output_path: Path, job_id: str) -> Path:
    return output_path.with_name(f".{output_path.name}.segments-{job_id}")


def _segment_path(output_path: Path, job: Job, index: int) -> Path:
    return segment_dir(output_path, job.id) / f"{index:05d}{formats.segment_suffix(job.codec)}"


def _remove_segments_quietly(job_id: str) -> None:
    try:
        job = JobStore.from_settings().find(job_id)
        if job is not None:
            shutil.rmtree(segment_dir(resolve_in_storage(job.output, storage_root()), job_id), ignore_errors=True)
    except (redis.RedisError, VidstyleError) as exc:
        logger.warning("job %s: segment files not removed: %s", job_id, exc)


@app.task(bind=True, base=SegmentTask, name=SEGMENT_TASK_NAME, ignore_result=False,  # the chord counts results
          **RETRIED_TASK)
def stylize_segment(self: Task, job_id: str, index: int, start: int | None, end: int | None, frames: int) -> str:
    store = JobStore.from_settings()
    unit = segment_unit(index)
    attempt, why = begin_attempt(self, store, job_id, unit)
    if attempt is None:
        if why == "stopped":
            return CANCELLED  # the job ended: counted, so that the join still comes and cleans up
        raise Ignore()  # done, or running on a live worker: the chord must not count it twice

    def ended(outcome: str) -> str:
        if not store.end_unit(attempt, outcome, unit_fields={unit + "state": "done"}):
            raise Ignore()  # fenced: the current attempt reports
        return outcome

    def requeued(_: str) -> dict:
        return {"unit_fields": {unit + "state": QUEUED}}

    job = store.get(job_id)
    if job.cancel_requested:
        return ended(CANCELLED)
    root = storage_root()
    check_span(job, index, [start, end, frames])
    input_path, _ = checked_paths(job, root)
    segment_path = unit_output(job, unit, root)  # in the job's own folder: an earlier attempt's file is replaced
    remove_partials(job, unit, root)

    def work() -> str:
        progress = JobProgress(store, attempt, segment=index)
        stylize_file(input_path, segment_path, stylizer_for(job, root), batch_size=job.batch_size or None,
                     encode=EncodeOptions(codec=job.codec, crf=job.crf, preset=job.preset), force=True,
                     on_progress=progress, partial_token=attempt.partial_token, span=Span(start, end, frames),
                     before_commit=progress.before_commit, temporal_strength=job.temporal_strength,
                     controls=job_controls(job))
        return ended(SUCCEEDED)

    store.set_current_job(worker_id(), os.getpid(), job_id)
    try:
        return run_attempt(self, store, attempt, job, work, lambda: ended(CANCELLED), requeued)
    finally:
        store.set_current_job(worker_id(), os.getpid(), None)


@app.task(bind=True, base=JobTask, name=JOIN_TASK_NAME, throws=(VidstyleError,),
          autoretry_for=TRANSIENT_ERRORS, dont_autoretry_for=PERMANENT_OS_ERRORS, retry_backoff=5, max_retries=5)
def join_segments_task(self: Task, job_id: str, spans: list[list[int | None]]) -> str:
    """The chord's callback: every segment has ended (done, or stopped by a cancel)."""
    store = JobStore.from_settings()
    attempt, why = begin_attempt(self, store, job_id, JOIN)
    if attempt is None:
        if why == "stopped":  # the job failed: only the files are left to remove
            _remove_segments_quietly(job_id)
        raise Ignore()
    job = store.get(job_id)

    def cancelled() -> str:
        # Files first: once the job reads cancelled, nothing of it is left in storage.
        _remove_segments_quietly(job_id)
        store.end_unit(attempt, CANCELLED, unit_fields=_unit_done(attempt), job_fields=final_fields(CANCELLED))
        return CANCELLED

    def requeued(_: str) -> dict:
        return {"unit_fields": {JOIN + "state": QUEUED}}

    def work() -> str:
        if job.cancel_requested:
            return cancelled()
        root = storage_root()
        for index, span in enumerate(spans):
            check_span(job, index, span)
        if len(spans) != job.segments:
            raise VidstyleError(f"the join names {len(spans)} segments, the job has {job.segments}")
        input_path, output_path = checked_paths(job, root)
        remove_partials(job, JOIN, root)
        segments = [(_segment_path(output_path, job, index), Span(*span)) for index, span in enumerate(spans)]
        missing = [str(index) for index, (path, _) in enumerate(segments) if not path.is_file()]
        if missing:
            raise VidstyleError(f"segments {', '.join(missing)} are missing (their files were removed)")
        started = time.monotonic()
        commit_check = functools.partial(before_commit, JobProgress(store, attempt), output_path, job.output)
        with partial_file(output_path, attempt.partial_token, commit_check) as partial:
            join_segments(input_path, segments, partial)
        if store.end_unit(attempt, SUCCEEDED, unit_fields={**_unit_done(attempt),
                                                           "join_seconds": round(time.monotonic() - started, 3)},
                          job_fields=final_fields(SUCCEEDED)):
            _remove_segments_quietly(job_id)
        return SUCCEEDED

    return run_attempt(self, store, attempt, job, work, cancelled, requeued)
