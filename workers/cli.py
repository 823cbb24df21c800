"""Fleet commands: `vidstyle status/watch/list/cancel/workers/worker`, and
`vidstyle submit` when a broker is configured (`vidstyle train --submit` too).

Only Redis is needed to follow jobs, so these import neither torch nor the
Celery app until a command needs them: they answer at once.
"""
from __future__ import annotations

import datetime
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import click
import redis
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from tqdm import tqdm

from vidstyle.errors import VidstyleError
from vidstyle.settings import setting, use_flag
from vidstyle.workers.jobs import (AUTO, CANCELLED, DEFAULT_QUEUE, FAILED, FINAL_STATES, RUNNING, STATES, SUCCEEDED,
                                   TRAINING_QUEUE, Job, JobStore, broker_url, job_store_url)

if TYPE_CHECKING:  # torch: not loaded by the commands that only talk to Redis
    from vidstyle.inference import Controls

# Exit status of `watch` and `submit --wait`: how the job ended. 2 is click's usage error.
EXIT_CODES = {SUCCEEDED: 0, FAILED: 1, CANCELLED: 3}
POLL_SECONDS = 0.25


def reports_unreachable_servers(command: Callable) -> Callable:
    """Connection trouble with Redis becomes one line naming the server (password masked)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise VidstyleError(f"cannot reach the job store at {maybe_sanitize_url(job_store_url())}: {exc}") from exc
        except redis.RedisError as exc:
            raise VidstyleError(f"job store at {maybe_sanitize_url(job_store_url())}: {exc}") from exc
        except OperationalError as exc:
            raise VidstyleError(f"cannot reach the broker at {maybe_sanitize_url(broker_url())}: {exc}") from exc

    return wrapper


def json_option(command: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(command)


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).isoformat(" ", "seconds") if timestamp else "-"


def _progress(job: Job) -> str:
    done, total = job.done_and_total
    if not total:  # not known (MKV, WebM, FLV state no frame count)
        return str(done) if done else "-"
    return f"{done}/{total}{' it' if job.is_training else ''} ({100 * done // total}%)"


def _speed(job: Job) -> str:
    if job.state != RUNNING:
        return "-"
    rate = f"{job.iterations_per_second:.2f} it/s" if job.is_training else f"{job.fps:.1f} fps"
    return f"{rate}, ETA {job.eta_seconds:.0f} s"


def exit_with_outcome(job: Job) -> None:
    if job.state == FAILED:
        raise VidstyleError(f"job {job.id} failed: {job.error}")
    if job.state == CANCELLED:
        click.echo(f"vidstyle: job {job.id} was cancelled", err=True)
    sys.exit(EXIT_CODES[job.state])


def poll(store: JobStore, job_id: str) -> Iterator[Job]:
    """The job's record a few times a second, up to the one that says it ended."""
    while True:
        job = store.get(job_id)
        yield job
        if job.state in FINAL_STATES:
            return
        time.sleep(POLL_SECONDS)


def follow(store: JobStore, job_id: str, as_json: bool) -> Job:
    """Follow the job until it ends: a progress bar, or with `as_json` one JSON line per change."""
    if as_json:
        shown = None
        for job in poll(store, job_id):
            if job != shown:
                click.echo(json.dumps(job.to_dict()))
                shown = job
        return job
    with tqdm(unit="frame", desc=job_id) as bar:
        for job in poll(store, job_id):
            done, total = job.done_and_total
            bar.unit = "it" if job.is_training else "frame"
            if done < bar.n:  # a redelivered job starts again from its first frame (a training, from its checkpoint)
                bar.reset()
            bar.total = total or bar.total
            postfix = job.state + (f" on {job.worker}" if job.worker else "")
            if postfix != bar.postfix:
                bar.set_postfix_str(postfix)
            bar.update(done - bar.n)
    return job


@reports_unreachable_servers
def submit_to_fleet(input_path: Path, style: str | None, *, painting: Path | None, upscale: str | None,
                    output: Path | None, batch_size: int | None, codec: str, crf: int, preset: str, force: bool,
                    queue: str | None, segment_seconds: str | None, temporal_strength: float, sequence_fps: Fraction, controls: Controls, wait: bool, as_json: bool,
                    network: str | None = None) -> None:
    """`vidstyle submit` and `vidstyle upscale` with a broker: queue the job (on `queue`, else the default
    one; in segments of `segment_seconds`, else auto), print its id, and with `wait` follow it."""
    from vidstyle.media import EncodeOptions
    from vidstyle.workers.client import submit_job  # torch (to check the style) and Celery: only here

    job = submit_job(input_path, style, painting=painting, upscale=upscale, output=output,
                     encode=EncodeOptions(codec=codec, crf=crf, preset=preset), batch_size=batch_size, queue=queue or DEFAULT_QUEUE, force=force,
                     segment_seconds=segment_seconds or AUTO,
                     temporal_strength=temporal_strength, sequence_fps=sequence_fps, controls=controls, network=network)
    report_submitted(job, wait, as_json)


@reports_unreachable_servers
def submit_training_to_fleet(name: str, settings: dict, *, queue: str | None, wait: bool, as_json: bool,
                             force: bool) -> None:
    """`vidstyle train --submit` (and `train-upscaler`): queue the training of `name` with `settings`
    (vidstyle.trainer.config.TrainConfig's) on `queue`, else the training queue; print its id, and
    with `wait` follow it."""
    from vidstyle.workers.client import submit_training  # torch and Celery: only here

    report_submitted(submit_training(name, settings, queue=queue or TRAINING_QUEUE, force=force), wait, as_json)


def report_submitted(job: Job, wait: bool, as_json: bool) -> None:
    """Print a queued job's id (its record with `as_json`); with `wait`, follow it, print its output's
    path when it succeeds and exit with how it ended."""
    if not wait:
        click.echo(json.dumps(job.to_dict()) if as_json else job.id)
        return
    if not as_json:
        click.echo(job.id)
    job = follow(JobStore.from_settings(), job.id, as_json)
    if job.state == SUCCEEDED and not as_json:
        from vidstyle.workers.storage import storage_root

        click.echo(str(storage_root() / job.output))
    exit_with_outcome(job)


@click.command()
@click.argument("job_id", metavar="JOB")
@json_option
@reports_unreachable_servers
def status(job_id: str, as_json: bool) -> None:
    """Show one job: state, progress, worker, error, and each attempt: its worker and how it ended."""
    store = JobStore.from_settings()
    job = store.get(job_id)
    history = store.attempt_history(job.id)
    if as_json:
        click.echo(json.dumps({**job.to_dict(), "attempt_history": history}))
        return
    rows = {
        "job": job.id, "state": job.state, "progress": _progress(job), "speed": _speed(job),
        **({"losses": ", ".join(f"{name} {value:.4g}" for name, value in job.to_dict()["losses"].items()) or "-",
            "sample": job.sample or "-"} if job.is_training else {}),
        "input": job.input, "output": job.output, "task": job.treatment if job.is_training else f"{job.task} {job.treatment}",
        "queue": job.queue,
        "worker": job.worker or "-", "attempts": str(job.attempts),
        "segments": f"{job.segments} on {len(set(store.segment_workers(job.id).values()))} workers"
                    + (f", joined in {job.join_seconds:.1f} s" if job.join_seconds else "") if job.segments else "-",
        "error": job.error or "-",
        "created": _when(job.created_at), "started": _when(job.started_at), "finished": _when(job.finished_at),
    }
    for name, value in rows.items():
        click.echo(f"{name + ':':<10} {value}")
    for attempt in history:
        span = f"{_when(attempt['started_at'])} - {_when(attempt['ended_at'])[-8:] if attempt['ended_at'] else 'now'}"
        click.echo(f"  attempt {attempt['number']:<3} {_unit_name(attempt['unit']):<11} {attempt['worker']:<28} {span:<30} "
                   f"{attempt['outcome'] or 'running'}")


def _unit_name(unit: str) -> str:
    return unit.rstrip(":").replace(":", " ") or "whole job"


@click.command()
@click.argument("job_id", metavar="JOB")
@json_option
@reports_unreachable_servers
def watch(job_id: str, as_json: bool) -> None:
    """Follow a job with a progress bar until it ends.

    Exit status: 0 succeeded, 1 failed (or an error), 3 cancelled."""
    exit_with_outcome(follow(JobStore.from_settings(), job_id, as_json))


@click.command(name="list")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES), help="Only jobs in this state (repeatable).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="At most this many, newest first.")
@json_option
@reports_unreachable_servers
def list_jobs(states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List recent jobs, newest first."""
    jobs = JobStore.from_settings().recent(limit, states)
    if as_json:
        click.echo(json.dumps([job.to_dict() for job in jobs]))
        return
    click.echo(f"{'JOB':<12}  {'STATE':<9}  {'PROGRESS':<18}  {'APPLIES':<12}  {'WORKER':<24}  {'CREATED':<19}  INPUT")
    for job in jobs:
        click.echo(f"{job.id:<12}  {job.state:<9}  {_progress(job):<18}  {job.treatment:<12}  {job.worker or '-':<24}  "
                   f"{_when(job.created_at):<19}  {job.input}")


@click.command()
@click.argument("job_id", metavar="JOB")
@json_option
@reports_unreachable_servers
def cancel(job_id: str, as_json: bool) -> None:
    """Cancel a job: a queued one at once, a running one after its current batch (its partial output is removed)."""
    job = JobStore.from_settings().cancel(job_id)
    if as_json:
        click.echo(json.dumps(job.to_dict()))
    elif job.state == CANCELLED:
        click.echo(f"{job.id} cancelled")
    else:
        click.echo(f"{job.id} cancelling: {job.worker} stops it after the current batch")


@click.command()
@json_option
@reports_unreachable_servers
def workers(as_json: bool) -> None:
    """List the live workers: device, queues and the jobs they are running."""
    found = JobStore.from_settings().live_workers()
    if as_json:
        click.echo(json.dumps([w.to_dict() for w in found]))
        return
    if not found:
        click.echo("no live workers")
        return
    click.echo(f"{'WORKER':<32}  {'DEVICE':<8}  {'QUEUES':<16}  {'PROCS':>5}  {'SEEN':<8}  JOBS")
    for w in found:
        seen = f"{time.time() - w.seen_at:.0f} s ago"
        click.echo(f"{w.name:<32}  {w.device:<8}  {w.queues:<16}  {w.concurrency:>5}  {seen:<8}  {','.join(w.jobs) or '-'}")


def warm_compile_cache() -> None:
    """Compile the network for the common frame sizes (VIDSTYLE_WARM_SIZES) into the
    on-disk cache before taking jobs, once, for every pool process to load in seconds
    (vidstyle.workers.tasks). In a child process: the pool forks from this one, which must not
    have started torch's threads."""
    import multiprocessing

    from vidstyle import inference

    sizes = inference.warm_sizes()
    if sizes:  # a spawned process inherits no flags: they go as arguments
        child = multiprocessing.get_context("spawn").Process(
            target=inference.compile_warm_sizes,
            args=(sizes, setting("VIDSTYLE_DEVICE"), True, setting("VIDSTYLE_PRECISION")))
        child.start()
        child.join()


@click.command()
@click.option("--device", help="cpu, cuda or cuda:N for this worker's networks [default: cuda when available].")
@click.option("--queues", "-Q", default=f"{DEFAULT_QUEUE},{TRAINING_QUEUE}", show_default=True,
              help="Comma-separated queues to take jobs from: stylizing's and training's by default.")
@click.option("--concurrency", "-c", default=1, show_default=True, type=click.IntRange(1),
              help="Jobs at once (pool processes); one per GPU is usual.")
@click.option("--name", "-n", help="Worker name, NAME@HOST (%h is this host) [default: vidstyle[-DEVICE]@%h]; "
                                   "need not be unique: each run is told apart as NAME#RANDOM.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32"]),
              help="Network precision: auto (fp16 on CUDA, bf16 on CPUs that have it) or fp32 [default: VIDSTYLE_PRECISION, else auto].")
@click.option("--on-term", type=click.Choice(["finish", "requeue"]),
              help="On SIGTERM: finish the running job (a planned stop), or stop it at its next batch and put it "
                   "back on the queue at once (a preempted node) [default: VIDSTYLE_ON_TERM, else finish].")
def worker(device: str | None, queues: str, concurrency: int, name: str | None, loglevel: str, precision: str | None,
           on_term: str | None) -> None:
    """Run a worker that takes jobs from the broker (plain `celery -A vidstyle.workers worker` works too)."""
    broker_url()  # a clear line, not Celery's default of a local AMQP server
    # The flags stand for their settings in this process and in the pool processes it forks.
    for setting_name, value, flag in (("VIDSTYLE_DEVICE", device, "--device"), ("VIDSTYLE_ON_TERM", on_term, "--on-term"),
                                      ("VIDSTYLE_PRECISION", precision, "--precision")):
        if value:
            use_flag(setting_name, value, flag)
    from vidstyle.workers.celery import app
    from vidstyle.workers.identity import worker_device
    from vidstyle.workers.tasks import on_term_setting

    worker_device()  # a bad or missing device: one line now, not a traceback from every job
    on_term_setting()  # likewise a bad VIDSTYLE_ON_TERM
    warm_compile_cache()
    name = name or f"vidstyle{'-' + device.replace(':', '') if device else ''}@%h"
    # Mingle and gossip sync revocations and events between workers; the fleet uses neither
    # (cancellation and presence live in the job store), and mingle costs a second at start.
    app.worker_main(["worker", f"--queues={queues}", f"--concurrency={concurrency}", f"--hostname={name}",
                     f"--loglevel={loglevel}", "--without-mingle", "--without-gossip"])
