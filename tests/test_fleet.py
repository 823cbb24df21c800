"""The worker fleet with real parts: a real redis-server, Celery workers in their
own processes (`vidstyle worker`), real clips in a storage root, and the
`vidstyle` command run as a user runs it."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from conftest import DEVICES, TEST_FACTOR, TEST_STYLE, RedisServer, decode, free_port, wait_until
from test_cli import _audio_only, _not_a_video, _truncated, assert_clean_failure
from vidstyle import exposure
from vidstyle.errors import VidstyleError
from vidstyle.inference import Controls, Stylizer, resolve_device
from vidstyle.workers.jobs import CANCELLED, FAILED, FINAL_STATES, RUNNING, SUCCEEDED, Job, JobStore, connect
from vidstyle.sample import make_sample_video
from vidstyle.styles import find_style

JOB_TIMEOUT = 180  # seconds: generous, the machine may be shared with a training run


class Fleet:
    """One test's corner of the fleet: its own queue and storage root on the shared Redis."""

    def __init__(self, redis_server: RedisServer, storage: Path, queue: str, logs: Path):
        self.redis_server, self.storage, self.queue, self.logs = redis_server, storage, queue, logs
        self.store = JobStore(connect(redis_server.url))
        self.workers: list[subprocess.Popen] = []

    def cli(self, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vidstyle.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=300, env=env or dict(os.environ))

    def start_worker(self, name: str, *, default_name: bool = False, flags: tuple[str, ...] = (),
                     **extra_env: str) -> tuple[subprocess.Popen, str]:
        """A `vidstyle worker` in its own process group (so a kill takes its pool too), once it is live;
        and its id in the job store. `name` names its log; the worker's own name is NAME-QUEUE@HOST,
        or with `default_name` the one `vidstyle worker` gives when told none; `flags` go to `vidstyle worker`."""
        log = open(self.logs / f"worker-{name}.log", "w")
        naming = [] if default_name else ["--name", f"{name}-{self.queue}@%h"]
        process = subprocess.Popen(
            [sys.executable, "-m", "vidstyle.cli", "worker", *naming, "--queues", self.queue, *flags],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **extra_env}, start_new_session=True)
        log.close()
        self.workers.append(process)
        worker_id = wait_until(lambda: self._live_id(process), 120, f"worker {name} to start")
        return process, worker_id

    def _live_id(self, process: subprocess.Popen) -> str | None:
        assert process.poll() is None, f"worker exited early; see {self.logs}"
        return next((w.name for w in self.store.live_workers() if w.pid == process.pid), None)

    def kill(self, process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        os.killpg(process.pid, sig)
        process.wait(timeout=60)

    def stop_all(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill(process)

    def submit(self, source: Path, style: str = TEST_STYLE, **options) -> str:
        from vidstyle.workers.client import submit_job

        return submit_job(source, style, queue=self.queue, **options).id

    def enqueue_unchecked(self, input_name: str, style: str = TEST_STYLE) -> str:
        """A job as a careless or hostile client could queue it, past submit's own checks."""
        import secrets

        from vidstyle.workers.client import enqueue

        job = Job(id=secrets.token_hex(6), input=input_name, output="out.mp4", style=style, queue=self.queue,
                  codec="libx264", crf=18, preset="medium")
        self.store.create(job)
        enqueue(job, self.store)
        return job.id

    def wait_for(self, job_ids: list[str], timeout: float = JOB_TIMEOUT) -> dict[str, Job]:
        def all_final() -> dict[str, Job] | None:
            jobs = {job_id: self.store.get(job_id) for job_id in job_ids}
            return jobs if all(job.state in FINAL_STATES for job in jobs.values()) else None

        return wait_until(all_final, timeout, f"jobs {job_ids} to end", interval=0.2)

    def wait_running(self, job_id: str) -> Job:
        def started() -> Job | None:
            job = self.store.get(job_id)
            assert job.state not in FINAL_STATES, job
            return job if job.state == RUNNING and job.frames_done > 0 else None

        return wait_until(started, JOB_TIMEOUT, f"job {job_id} to stylize its first frames")

    def queued_messages(self) -> int:
        return redis.Redis.from_url(self.redis_server.url).llen(self.queue)


@pytest.fixture
def fleet(redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    storage, logs = tmp_path / "storage", tmp_path / "logs"
    storage.mkdir()
    logs.mkdir()
    monkeypatch.setenv("VIDSTYLE_BROKER_URL", redis_server.url)
    monkeypatch.setenv("VIDSTYLE_STORAGE", str(storage))
    fleet = Fleet(redis_server, storage, re.sub(r"\W", "-", f"test-{request.node.name}")[:60], logs)
    yield fleet
    fleet.stop_all()


def tiny_clip(path: Path, frames: int = 12) -> Path:
    return make_sample_video(path, width=64, height=48, frames=frames)


def long_clip(path: Path) -> Path:
    """Seconds of work even on a fast CPU: for jobs that must outlast something."""
    return make_sample_video(path, width=160, height=120, frames=150, audio=False)


def test_submit_watch_and_decode_the_output(fleet: Fleet) -> None:
    worker, worker_name = fleet.start_worker("w1")
    source = tiny_clip(fleet.storage / "movie.mp4")
    submitted = fleet.cli("submit", source, "--style", TEST_STYLE, "--queue", fleet.queue)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{12}", job_id)

    watched = fleet.cli("watch", job_id)
    assert watched.returncode == 0, watched.stderr
    assert f"{job_id}: 100%" in watched.stderr  # the bar reached its end

    original, styled = decode(source), decode(fleet.storage / f"movie.{TEST_STYLE}.mp4")
    assert (styled["frames"], styled["size"]) == (12, (64, 48))
    assert styled["times"] == original["times"]
    assert styled["audio_durations"] == pytest.approx(original["audio_durations"], abs=0.05)
    assert abs(styled["pixels"].astype(int) - original["pixels"]).mean() > 10  # stylized, not copied

    status = json.loads(fleet.cli("status", job_id, "--json").stdout)
    assert (status["state"], status["frames_done"], status["attempts"], status["worker"]) == (SUCCEEDED, 12, 1, worker_name)
    assert [json.loads(line)["state"] for line in fleet.cli("watch", job_id, "--json").stdout.splitlines()] == [SUCCEEDED]
    listed = json.loads(fleet.cli("list", "--state", "succeeded", "--json").stdout)
    assert job_id in [job["id"] for job in listed]
    live = {w["name"]: w for w in json.loads(fleet.cli("workers", "--json").stdout)}
    # The worker's default device: CUDA where this machine has it, else the CPU.
    assert (live[worker_name]["device"], live[worker_name]["queues"]) == (str(resolve_device(None)), fleet.queue)
    assert sorted(p.name for p in fleet.storage.iterdir()) == ["movie.mp4", f"movie.{TEST_STYLE}.mp4"]


def test_a_webm_job_gets_vp9_and_its_frame_count_once_known(fleet: Fleet) -> None:
    # WebM states no frame count: the record counts frames as they come and takes the count as the total at the end.
    fleet.start_worker("w1")
    source = make_sample_video(fleet.storage / "clip.webm", width=64, height=48, frames=12, codec="libvpx-vp9",
                               audio_codec="libopus", audio_rate=48000)
    job_id = fleet.submit(source, TEST_STYLE)
    job = fleet.wait_for([job_id])[job_id]
    assert (job.state, job.codec, job.frames_done, job.frames_total) == (SUCCEEDED, "libvpx-vp9", 12, 12)
    assert decode(fleet.storage / f"clip.{TEST_STYLE}.webm")["audio_codecs"] == ["opus"]


@pytest.mark.parametrize("device", DEVICES)
def test_an_image_sequence_job_plays_at_its_fps(fleet: Fleet, device: str) -> None:
    # The rate travels in the job record; the frames come back as a sequence of their own, numbered as the shot.
    # So do the artist's controls: the frames come back as this machine's Stylizer makes them with the same ones,
    # on the worker's device.
    fleet.start_worker("w1", flags=("--device", device))
    (fleet.storage / "shot").mkdir()
    frames = np.stack([np.full((48, 64, 3), (170, 120, 90 + number % 8), np.uint8) for number in range(1001, 1005)])
    for number, frame in zip(range(1001, 1005), frames):
        Image.fromarray(frame).save(fleet.storage / f"shot/frame_{number}.png")
    pattern = fleet.storage / "shot" / "frame_%04d.png"
    controls = Controls(strength=0.5, preserve_colors=True)
    to_video = fleet.submit(pattern, output=fleet.storage / "shot.mp4", sequence_fps=Fraction(25))
    to_frames = fleet.submit(pattern, controls=controls, temporal_strength=0)
    jobs = fleet.wait_for([to_video, to_frames])
    assert [(jobs[j].state, jobs[j].sequence_fps, jobs[j].frames_total) for j in (to_video, to_frames)] == \
        [(SUCCEEDED, "25", 4), (SUCCEEDED, "24", 4)]
    assert (jobs[to_frames].strength, jobs[to_frames].preserve_colors) == (0.5, True)
    assert (jobs[to_video].strength, jobs[to_video].preserve_colors) == (1.0, False)
    assert decode(fleet.storage / "shot.mp4")["times"] == pytest.approx([0, 0.04, 0.08, 0.12], abs=1e-4)
    written = sorted((fleet.storage / f"shot.{TEST_STYLE}").iterdir())
    assert [p.name for p in written] == [f"frame_{n}.png" for n in range(1001, 1005)]
    stylizer = Stylizer(find_style(TEST_STYLE).load_network(), resolve_device(device), compile=False)
    lifted, gains = exposure.lift(frames)  # these frames are dim: lifted for the network, as every video frame is
    expected = exposure.restore(stylizer(lifted, controls), gains).astype(int)
    plain = exposure.restore(stylizer(lifted), gains).astype(int)
    got = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in written]).astype(int)
    assert np.abs(got - expected).max() <= 1 and np.abs(got - plain).mean() > 20


def test_submit_wait_follows_a_photo_to_its_end(fleet: Fleet) -> None:
    fleet.start_worker("w1")
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(fleet.storage / "photo.png")
    result = fleet.cli("submit", fleet.storage / "photo.png", "--style", TEST_STYLE, "--queue", fleet.queue, "--wait")
    assert result.returncode == 0, result.stderr
    job_id, output = result.stdout.split()
    assert output == str(fleet.storage / f"photo.{TEST_STYLE}.png")
    with Image.open(output) as image:
        assert image.size == (60, 40)

    # Again over it: refused, unless --force, which removes it here (a worker never writes over a file).
    again = ["submit", fleet.storage / "photo.png", "--style", TEST_STYLE, "--queue", fleet.queue, "--wait"]
    assert_clean_failure(fleet.cli(*again), "output exists", "--force")
    Path(output).write_bytes(b"the old one")
    result = fleet.cli(*again, "--force")
    assert result.returncode == 0, result.stderr
    with Image.open(output) as image:
        assert image.size == (60, 40)


def test_an_unreachable_server_gives_one_line_within_seconds(fleet: Fleet) -> None:
    closed = f"redis://:secret@127.0.0.1:{free_port()}/0"
    for command in (["status", "abc123"], ["list"], ["workers"]):
        started = time.monotonic()
        result = fleet.cli(*command, env={**os.environ, "VIDSTYLE_BROKER_URL": closed})
        assert time.monotonic() - started < 30  # not minutes of retries (generous: CI machines are loaded)
        assert_clean_failure(result, "cannot reach the job store", "127.0.0.1")
        assert "secret" not in result.stderr

    # The job store answers but the broker does not: nothing is left behind.
    source = tiny_clip(fleet.storage / "unsent.mp4")
    started = time.monotonic()
    result = fleet.cli("submit", source, "--style", TEST_STYLE,
                       env={**os.environ, "VIDSTYLE_BROKER_URL": closed, "VIDSTYLE_RESULT_URL": fleet.redis_server.url})
    assert time.monotonic() - started < 60  # including the import of torch to check the style
    assert_clean_failure(result, "cannot reach the broker")
    assert not [job for job in fleet.store.recent(1000) if job.input == "unsent.mp4"]


@pytest.mark.parametrize("case, expected", [
    ("absolute", "outside the storage root"),
    ("dotdot", "outside the storage root"),
    ("symlink", "outside the storage root"),
    ("missing", "not found"),
    ("unknown-style", "unknown style"),
    ("weights-file", "installed style"),
    ("output-exists", "--force"),
])
def test_submit_refuses_at_once_what_it_can_know(fleet: Fleet, tmp_path: Path, case: str, expected: str) -> None:
    outside = tiny_clip(tmp_path / "outside.mp4", frames=2)
    inside = tiny_clip(fleet.storage / "inside.mp4", frames=2)
    (fleet.storage / "escape.mp4").symlink_to(outside)
    (fleet.storage / f"inside.{TEST_STYLE}.mp4").write_bytes(b"keep me")
    source, style = {
        "absolute": (outside, TEST_STYLE),
        "dotdot": (fleet.storage / ".." / "outside.mp4", TEST_STYLE),
        "symlink": (fleet.storage / "escape.mp4", TEST_STYLE),
        "missing": (fleet.storage / "missing.mp4", TEST_STYLE),
        "unknown-style": (inside, "no-such-style"),
        "weights-file": (inside, str(tmp_path / "my.pth")),
        "output-exists": (inside, TEST_STYLE),
    }[case]
    with pytest.raises(VidstyleError, match=re.escape(expected)):
        fleet.submit(source, style)
    assert fleet.queued_messages() == 0
    assert (fleet.storage / f"inside.{TEST_STYLE}.mp4").read_bytes() == b"keep me"


def test_submit_refuses_an_upscale_the_workers_cannot_have(fleet: Fleet, tmp_path: Path) -> None:
    inside = tiny_clip(fleet.storage / "inside.mp4", frames=2)
    for upscale, expected in (("2", "no x2 upscaler installed (installed: "),
                              (str(tmp_path / "x4.pth"), "the factor names an installed upscaler")):
        with pytest.raises(VidstyleError, match=re.escape(expected)):
            fleet.submit(inside, None, upscale=upscale)
    assert fleet.queued_messages() == 0


def test_a_refused_submit_is_one_line(fleet: Fleet, tmp_path: Path) -> None:
    outside = tiny_clip(tmp_path / "outside.mp4", frames=2)
    assert_clean_failure(fleet.cli("submit", outside, "--style", TEST_STYLE, "--queue", fleet.queue), "outside the storage root")
    assert fleet.queued_messages() == 0


def test_bad_input_fails_with_its_reason_and_the_worker_keeps_serving(fleet: Fleet, tmp_path: Path) -> None:
    worker, _ = fleet.start_worker("w1")
    outside = tiny_clip(tmp_path / "outside.mp4", frames=2)
    (fleet.storage / "escape.mp4").symlink_to(outside)
    expected = {
        fleet.submit(_not_a_video(fleet.storage / "notes.mp4")): "not a video",
        fleet.submit(_audio_only(fleet.storage / "song.mp4")): "no video stream",
        fleet.submit(_truncated(fleet.storage / "cut.mp4")): "corrupt",
        fleet.enqueue_unchecked(str(outside)): "not inside the storage root",
        fleet.enqueue_unchecked("../outside.mp4"): "not inside the storage root",
        fleet.enqueue_unchecked("escape.mp4"): "outside the storage root through a symlink",
        fleet.enqueue_unchecked("notes.mp4", style="no-such-style"): "unknown style",
    }
    good = fleet.submit(tiny_clip(fleet.storage / "good.mp4"))
    jobs = fleet.wait_for([*expected, good])

    for job_id, reason in expected.items():
        assert (jobs[job_id].state, jobs[job_id].attempts) == (FAILED, 1), jobs[job_id]  # no retries for bad input
        assert reason in jobs[job_id].error
    assert jobs[good].state == SUCCEEDED
    assert worker.poll() is None
    assert decode(fleet.storage / f"good.{TEST_STYLE}.mp4")["frames"] == 12
    assert not list(fleet.storage.glob(".*partial*")) and not (fleet.storage / "out.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["outside.mp4"]  # nothing written beside it

    watched = fleet.cli("watch", next(iter(expected)))
    assert_clean_failure(watched, "failed", "not a video")


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every file and link under `folder`, with its content or target."""
    return {str(p.relative_to(folder)): str(p.readlink()) if p.is_symlink() else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


def test_a_worker_refuses_jobs_crafted_in_the_store(fleet: Fleet, tmp_path: Path, style_dir: Path) -> None:
    # Whoever can write to Redis can write a job record: each of these fails, with its reason, before
    # the worker reads or writes a file for it; nothing in or outside the storage root changes.
    import secrets

    from vidstyle.styles import save_style
    from vidstyle.model import TransformerNet
    from vidstyle.workers.celeryconfig import SEGMENT_TASK_NAME
    from vidstyle.workers.client import enqueue

    outside = tmp_path / "outside"
    outside.mkdir()
    tiny_clip(outside / "secret.mp4", frames=2)
    save_style(TransformerNet(), outside / "planted.pth", {"name": "planted"})  # a working style, off the styles path
    tiny_clip(fleet.storage / "in.mp4", frames=2)
    (fleet.storage / "keep.mp4").write_bytes(b"someone's file")
    (fleet.storage / "escape.mp4").symlink_to(outside / "secret.mp4")
    (fleet.storage / "out-link").symlink_to(outside)
    (fleet.storage / "dangling.mp4").symlink_to(outside / "new.mp4")
    (fleet.storage / "shot").mkdir()
    for number in (1, 2):
        Image.fromarray(np.full((48, 64, 3), 100, np.uint8)).save(fleet.storage / f"shot/f_{number}.png")
    (fleet.storage / "shot/f_3.png").symlink_to(outside / "secret.mp4")
    before = {"storage": snapshot(fleet.storage), "outside": snapshot(outside)}

    def craft(raw: dict[str, str] | None = None, message: tuple | None = None, **fields: object) -> str:
        job = Job(**{"id": secrets.token_hex(6), "input": "in.mp4", "output": "", "style": TEST_STYLE,
                     "queue": fleet.queue, "codec": "libx264", "crf": 18, "preset": "medium", **fields})
        job.output = job.output or f"out-{job.id}.mp4"
        fleet.store.create(job)
        if raw:
            fleet.store.redis.hset(f"vidstyle:job:{job.id}", mapping=raw)
        if message:
            from vidstyle.workers.celery import app

            app.send_task(message[0], args=[job.id, *message[1:]], queue=fleet.queue)
        else:
            enqueue(job, fleet.store)
        return job.id

    expected = {
        craft(input=str(outside / "secret.mp4")): "not inside the storage root",
        craft(input="../outside/secret.mp4"): "not inside the storage root",
        craft(input="escape.mp4"): "outside the storage root through a symlink",
        craft(input="shot/f_%d.png", output="shot-out/f_%d.png"): "frame f_3.png of 'shot/f_%d.png' leads outside",
        craft(output="../outside/new.mp4"): "not inside the storage root",
        craft(output="out-link/new.mp4"): "outside the storage root through a symlink",
        craft(output="dangling.mp4"): "outside the storage root through a symlink",
        craft(output="keep.mp4"): "output 'keep.mp4' exists; a worker never replaces a file",
        craft(output="in.mp4"): "output 'in.mp4' exists",
        craft(style=str(outside / "planted.pth")): "is a file; a job names an installed style",
        craft(style="planted.pth"): "is a file",
        craft(style="../outside/planted"): "is a file",
        craft(crf=10**9): "crf 1e+09 is outside 0..63",
        craft(batch_size=10**9): "batch size 1e+09 is outside 0..1024",
        craft(factor=3): "upscale factor 3 is none of",
        craft(network="small"): "network 'small' is none of auto, full, compact",
        craft(strength=7.0): "strength 7 is outside 0..1",
        craft(temporal_strength=float("nan")): "temporal strength nan is outside",
        craft(segment_seconds="1e-9"): "segment seconds 1e-09 is outside",
        craft(sequence_fps="1e9"): "must be a frame rate",
        craft(preset="medium:x264opts=1"): "preset 'medium:x264opts=1' is not a preset name",
        craft(raw={"state": RUNNING, "split": "1", "segments": "2", "frames_total": "2"},
              message=(SEGMENT_TASK_NAME, 99, None, None, 1)): "segment 99 is not one of the job's 2",
    }
    garbled = craft(raw={"crf": "eighteen"})
    fleet.start_worker("w1")
    jobs = fleet.wait_for(list(expected))
    for job_id, reason in expected.items():
        assert (jobs[job_id].state, jobs[job_id].attempts <= 1) == (FAILED, True), jobs[job_id]
        assert reason in jobs[job_id].error, (reason, jobs[job_id].error)
    wait_until(lambda: fleet.store.redis.hget(f"vidstyle:job:{garbled}", "state") == FAILED, JOB_TIMEOUT, "garbled job")
    assert_clean_failure(fleet.cli("status", garbled), f"job {garbled}: its crf is 'eighteen', not a number")
    listed = fleet.cli("list")  # every other job still listed, the garbled one named in a warning
    assert listed.returncode == 0 and next(iter(expected)) in listed.stdout, listed.stderr
    assert f"warning: job {garbled}: its crf is 'eighteen'" in listed.stderr
    status = fleet.cli("status", next(iter(expected)))
    assert status.returncode == 0 and re.search(r"\nerror: +path '/.*' is not inside the storage root", status.stdout)
    assert {"storage": snapshot(fleet.storage), "outside": snapshot(outside)} == before  # nothing written, nothing removed


def test_redis_acls_let_submitters_submit_but_not_pass_for_workers(fleet: Fleet, tmp_path: Path) -> None:
    # deploy/redis-users.acl.example on a Redis of its own: a worker as `worker`, the user's commands as `submitter`.
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server")
    acl = (Path(__file__).parents[1] / "deploy/redis-users.acl.example").read_text()
    (tmp_path / "users.acl").write_text(acl.replace("WORKER_PASSWORD", "w0rker").replace("SUBMITTER_PASSWORD", "subm1t"))
    port = free_port()
    server = RedisServer(f"redis://worker:w0rker@127.0.0.1:{port}/0", [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
        "--aclfile", str(tmp_path / "users.acl")])
    server.start()
    private = Fleet(server, fleet.storage, "vidstyle", fleet.logs)  # the queue the file names
    try:
        private.start_worker("acl", VIDSTYLE_BROKER_URL=server.url)
        submitter_url = f"redis://submitter:subm1t@127.0.0.1:{port}/0"
        as_submitter = {**os.environ, "VIDSTYLE_BROKER_URL": submitter_url}
        source = tiny_clip(fleet.storage / "clip.mp4")
        submitted = fleet.cli("submit", source, "--style", TEST_STYLE, "--wait", env=as_submitter)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.split()[0]
        assert decode(fleet.storage / f"clip.{TEST_STYLE}.mp4")["frames"] == 12
        for command in (["status", job_id], ["list"], ["workers"]):
            assert fleet.cli(*command, env=as_submitter).returncode == 0, command
        assert_clean_failure(fleet.cli("cancel", job_id, env=as_submitter), "already succeeded")

        submitter = redis.Redis.from_url(submitter_url)
        for write in (lambda: submitter.hset("vidstyle:worker:fake#000000", "name", "fake#000000"),
                      lambda: submitter.sadd("vidstyle:active", "x|"), lambda: submitter.hset("unacked", "x", "[]")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                write()
    finally:
        private.stop_all()
        server.stop()


def test_cancel_a_running_and_a_queued_job(fleet: Fleet) -> None:
    fleet.start_worker("w1")
    running = fleet.submit(long_clip(fleet.storage / "long.mp4"), batch_size=1)
    fleet.wait_running(running)
    queued = fleet.submit(tiny_clip(fleet.storage / "next.mp4"))

    assert fleet.cli("cancel", queued).returncode == 0
    assert fleet.store.get(queued).state == CANCELLED  # at once: no worker had it
    assert fleet.cli("cancel", running).returncode == 0
    watched = fleet.cli("watch", running)
    assert watched.returncode == 3, watched.stderr
    assert watched.stderr.strip().endswith(f"vidstyle: job {running} was cancelled")

    # The worker passes over the cancelled message and serves the next job.
    after = fleet.submit(tiny_clip(fleet.storage / "after.mp4"))
    assert fleet.wait_for([after])[after].state == SUCCEEDED
    assert fleet.store.get(queued).attempts == 0
    assert sorted(p.name for p in fleet.storage.iterdir()) == ["after.mp4", f"after.{TEST_STYLE}.mp4", "long.mp4", "next.mp4"]
    assert_clean_failure(fleet.cli("cancel", running), "already cancelled")


def test_a_job_outlasting_the_time_limit_fails_and_leaves_nothing(fleet: Fleet) -> None:
    fleet.start_worker("w1", VIDSTYLE_JOB_TIME_LIMIT="4")  # stopped at 2 s, killed at 4 s
    source = make_sample_video(fleet.storage / "big.mp4", width=320, height=240, frames=150, audio=False)
    job_id = fleet.submit(source, batch_size=1)
    job = fleet.wait_for([job_id])[job_id]
    assert job.state == FAILED and "time limit" in job.error
    assert [p.name for p in fleet.storage.iterdir()] == ["big.mp4"]


# A worker's presence lapses after 3 s without a heartbeat, and workers look for lapsed ones every half
# second, so that recovery tests are quick; the visibility timeout stays at its default (hours).
FAST_RECOVERY = {"VIDSTYLE_WORKER_LAPSE": "3", "VIDSTYLE_RECOVERY_INTERVAL": "0.5", "OMP_NUM_THREADS": "1"}


def outcomes(fleet: Fleet, job_id: str) -> list[tuple[str, str, str]]:
    """Each attempt of the job as (unit, worker, how it ended), from `vidstyle status --json`."""
    status = json.loads(fleet.cli("status", job_id, "--json").stdout)
    return [(a["unit"], a["worker"], a["outcome"]) for a in status["attempt_history"]]


def unacknowledged(fleet: Fleet) -> dict[bytes, list]:
    """The messages of this test's queue that workers took and have not acknowledged (kombu's layout)."""
    client = redis.Redis.from_url(fleet.redis_server.url)
    entries = {tag: json.loads(raw) for tag, raw in client.hgetall("unacked").items()}
    return {tag: entry for tag, entry in entries.items() if entry[2] == fleet.queue}


def redeliver_unacknowledged(fleet: Fleet) -> None:
    """What Redis does once the visibility timeout passes: hand them back to the queue."""
    client = redis.Redis.from_url(fleet.redis_server.url)
    for tag, (message, _, routing_key) in unacknowledged(fleet).items():
        if client.hdel("unacked", tag):
            client.zrem("unacked_index", tag)
            client.rpush(routing_key, json.dumps(message))


def test_the_broker_layout_recovery_reads_is_kombu_s(fleet: Fleet) -> None:
    # vidstyle.workers.broker reads kombu's private Redis layout; a kombu release that changed it would switch
    # recovery off without an error, so the pin in pyproject.toml comes with this check.
    from vidstyle.workers.broker import UNACKED, UNACKED_INDEX, hand_back_stranded, to_front
    from vidstyle.workers.celery import app
    from vidstyle.workers.celeryconfig import TASK_NAME

    def send(name: str) -> str:
        return app.send_task(TASK_NAME, args=[name], queue=fleet.queue).id

    delivered = []

    def next_delivered(channel) -> tuple[str, object]:
        message = channel.basic_get(fleet.queue, no_ack=False)  # as a worker takes one: unacknowledged
        delivered.append(message)
        return message.headers["id"], message

    taken, waiting = send("layout-taken"), send("layout-waiting")
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        assert (channel.unacked_key, channel.unacked_index_key) == (UNACKED, UNACKED_INDEX)
        task_id, message = next_delivered(channel)
        assert task_id == taken  # first in, first out
        client = redis.Redis.from_url(fleet.redis_server.url)
        assert (client.type(UNACKED), client.type(UNACKED_INDEX)) == (b"hash", b"zset")
        assert client.zscore(UNACKED_INDEX, message.delivery_tag) is not None
        # The unacknowledged message is understood (task name, arguments) and handed back to the head of its queue.
        seen = []
        assert hand_back_stranded(0, lambda name, args: seen.append((name, args)) or args == ["layout-taken"]) == 1
        assert (TASK_NAME, ["layout-taken"]) in seen
        assert not client.hexists(UNACKED, message.delivery_tag)
        assert [next_delivered(channel)[0] for _ in range(2)] == [taken, waiting]

        # A message moved to the front is the next one delivered, before those queued earlier.
        first, second, latest = send("front-1"), send("front-2"), send("front-3")
        to_front(fleet.queue, latest)
        assert [next_delivered(channel)[0] for _ in range(3)] == [latest, first, second]
        for message in delivered[1:]:  # (the first was handed back: its tag is gone)
            message.ack()
    assert fleet.queued_messages() == 0 and not unacknowledged(fleet)


def test_a_killed_worker_s_job_is_taken_over_by_a_survivor(fleet: Fleet) -> None:
    workers = dict(reversed(fleet.start_worker(name, **FAST_RECOVERY)) for name in ("w1", "w2"))
    # A frame a batch: the worker dies after its first of 40 frames, whatever the CPU's speed.
    job_id = fleet.submit(tiny_clip(fleet.storage / "clip.mp4", frames=40), batch_size=1)
    first_name = fleet.wait_running(job_id).worker
    (second_name,) = set(workers) - {first_name}
    fleet.kill(workers[first_name])  # SIGKILL to the worker and its pool: as if the node died
    assert fleet.store.get(job_id).state == RUNNING

    # The survivor sees w1's presence lapse and puts the job back, long before the visibility timeout.
    job = fleet.wait_for([job_id])[job_id]
    assert (job.state, job.attempts, job.worker) == (SUCCEEDED, 2, second_name)
    assert outcomes(fleet, job_id) == [("", first_name, "worker lost"), ("", second_name, SUCCEEDED)]
    status = fleet.cli("status", job_id).stdout
    assert re.search(rf"attempt 1 +whole job +{re.escape(first_name)} .* worker lost", status), status
    output = fleet.storage / f"clip.{TEST_STYLE}.mp4"
    assert decode(output)["frames"] == 40
    assert sorted(p.name for p in fleet.storage.iterdir()) == ["clip.mp4", output.name]  # the dead one's partial too

    # w1's original message, taken and never acknowledged, comes back (the survivor hands it back once it
    # has waited a lapse, or Redis would after the visibility timeout): the job is done, so it is dropped.
    written = output.stat().st_mtime_ns
    redeliver_unacknowledged(fleet)
    wait_until(lambda: not unacknowledged(fleet) and fleet.queued_messages() == 0, 60, "the late message taken")
    survivor_log = fleet.logs / f"worker-{second_name.split('-')[0]}.log"
    wait_until(lambda: f"job {job_id}: job not run (" in survivor_log.read_text(), 30, "the drop logged")
    assert (fleet.store.get(job_id).attempts, output.stat().st_mtime_ns) == (2, written)
    # The dead worker's presence record expires by itself.
    assert first_name not in [w.name for w in fleet.store.live_workers()]


def test_two_workers_of_one_default_name_share_a_split_job_each_unit_once(fleet: Fleet) -> None:
    # `vidstyle worker` twice on one host, no --name: both are vidstyle@HOST. Each recovery scan (every
    # half second here) must not take the other's running segment for one of its own whose process died.
    names = [fleet.start_worker(label, default_name=True, **FAST_RECOVERY)[1] for label in ("a", "b")]
    assert names[0] != names[1] and names[0].split("#")[0] == names[1].split("#")[0] == f"vidstyle@{socket.gethostname()}"
    source = split_clip(fleet.storage / "long.mp4")
    job_id = fleet.submit(source, segment_seconds="0.5", batch_size=1)
    job = fleet.wait_for([job_id])[job_id]
    assert job.state == SUCCEEDED, job.error

    history = outcomes(fleet, job_id)
    units = [unit for unit, _, _ in history]
    assert len(units) == len(set(units)) == job.segments + 2  # the whole job (split), each segment, the join: once
    assert {outcome for _, _, outcome in history} == {"split", SUCCEEDED}
    assert set(fleet.store.segment_workers(job_id).values()) == set(names)  # both ran segments, side by side
    assert decode(fleet.storage / job.output)["times"] == decode(source)["times"]


def test_a_killed_worker_beside_a_live_one_of_its_name_is_recovered(fleet: Fleet) -> None:
    workers = dict(reversed(fleet.start_worker(label, default_name=True, **FAST_RECOVERY)) for label in ("a", "b"))
    job_id = fleet.submit(tiny_clip(fleet.storage / "clip.mp4", frames=40), batch_size=1)
    victim = fleet.wait_running(job_id).worker
    (survivor,) = set(workers) - {victim}
    fleet.kill(workers[victim])
    killed_at = time.time()

    job = fleet.wait_for([job_id])[job_id]
    assert (job.state, job.attempts, job.worker) == (SUCCEEDED, 2, survivor)
    assert outcomes(fleet, job_id) == [("", victim, "worker lost"), ("", survivor, SUCCEEDED)]
    # Taken back once the victim's own presence lapsed (3 s; scans every 0.5 s), not after the visibility
    # timeout (hours): the survivor's heartbeat, under the same name, does not keep it alive.
    retaken = fleet.store.attempt_history(job_id)[1]["started_at"] - killed_at
    assert retaken < 3 + 0.5 + 10, retaken  # (10 s of slack: the machine may be loaded)
    assert decode(fleet.storage / f"clip.{TEST_STYLE}.mp4")["frames"] == 40


def test_a_paused_worker_cannot_overwrite_or_finish_a_job_taken_over(fleet: Fleet) -> None:
    first, first_name = fleet.start_worker("w1", **FAST_RECOVERY)
    job_id = fleet.submit(tiny_clip(fleet.storage / "clip.mp4", frames=60), batch_size=1)
    fleet.wait_running(job_id)
    os.killpg(first.pid, signal.SIGSTOP)  # cut off, not dead: it will resume mid-job
    try:
        _, second_name = fleet.start_worker("w2", **FAST_RECOVERY)
        wait_until(lambda: fleet.store.get(job_id).attempts == 2, JOB_TIMEOUT, "the job taken over")
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    # w1 carries on from its batch; its next progress report is refused, and it stops.
    wait_until(lambda: "attempt 1 stopped: another worker took it over" in (fleet.logs / "worker-w1.log").read_text(),
               JOB_TIMEOUT, "w1 to be fenced")
    job = fleet.wait_for([job_id])[job_id]
    assert (job.state, job.attempts, job.worker) == (SUCCEEDED, 2, second_name)
    assert outcomes(fleet, job_id) == [("", first_name, "worker lost"), ("", second_name, SUCCEEDED)]
    original, styled = decode(fleet.storage / "clip.mp4"), decode(fleet.storage / f"clip.{TEST_STYLE}.mp4")
    assert styled["times"] == original["times"]
    assert sorted(p.name for p in fleet.storage.iterdir()) == ["clip.mp4", f"clip.{TEST_STYLE}.mp4"]
    assert first.poll() is None  # it serves on


def test_sigterm_with_on_term_requeue_hands_the_job_back_at_once(fleet: Fleet) -> None:
    # The flag, not the setting (another test sets that): it must reach the pool process that runs the job.
    first, first_name = fleet.start_worker("w1", flags=("--on-term", "requeue"), **FAST_RECOVERY)
    job_id = fleet.submit(tiny_clip(fleet.storage / "clip.mp4", frames=60), batch_size=1)
    fleet.wait_running(job_id)
    os.kill(first.pid, signal.SIGTERM)  # to the worker alone, as Kubernetes and Docker send it
    first.wait(timeout=60)
    job = fleet.store.get(job_id)
    assert (job.state, job.error) == ("queued", f"requeued: {first_name} preempted")
    assert fleet.queued_messages() == 1
    assert sorted(p.name for p in fleet.storage.iterdir()) == ["clip.mp4"]  # its partial file removed

    _, second_name = fleet.start_worker("w2", **FAST_RECOVERY)
    job = fleet.wait_for([job_id])[job_id]
    assert (job.state, job.attempts) == (SUCCEEDED, 2)
    assert outcomes(fleet, job_id) == [("", first_name, "preempted"), ("", second_name, SUCCEEDED)]
    assert decode(fleet.storage / f"clip.{TEST_STYLE}.mp4")["frames"] == 60


PREEMPTION_FLAG_UNDER_SIGNALS = """
import signal, sys, time
from vidstyle.workers import tasks
signal.signal(signal.SIGTERM, tasks._preempt)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    tasks.preempted.clear()  # as a preempted job does, while the worker's own SIGTERM may still arrive
print("done", flush=True)
"""


def test_a_sigterm_arriving_while_the_preemption_flag_is_cleared_does_not_hang_the_pool_process() -> None:
    # Two SIGTERMs reach a pool process (the node's, and its worker's); a handler that takes a lock
    # held by the code it interrupted waits forever, and the worker never exits.
    env = {**os.environ, "VIDSTYLE_BROKER_URL": "redis://127.0.0.1:1/0"}  # never connected to
    child = subprocess.Popen([sys.executable, "-c", PREEMPTION_FLAG_UNDER_SIGNALS, "3"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    assert child.stdout.readline() == "ready\n"
    deadline = time.monotonic() + 30
    while child.poll() is None and time.monotonic() < deadline:
        os.kill(child.pid, signal.SIGTERM)
        time.sleep(0.0005)
    hung = child.poll() is None
    child.kill()
    assert not hung and child.stdout.read() == "done\n"


def test_a_full_disk_fails_the_job_with_its_reason_and_the_worker_keeps_serving(fleet: Fleet) -> None:
    full = fleet.storage / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("needs to mount a small tmpfs (root)")
    try:
        worker, _ = fleet.start_worker("w1", OMP_NUM_THREADS="1")
        source = long_clip(fleet.storage / "big.mp4")
        job_id = fleet.submit(source, output=full / "big.out.mp4")
        job = fleet.wait_for([job_id])[job_id]
        assert (job.state, job.attempts) == (FAILED, 1), job
        assert "No space left on device" in job.error
        assert list(full.iterdir()) == []  # the partial file removed
        good = fleet.submit(tiny_clip(fleet.storage / "good.mp4"))
        assert fleet.wait_for([good])[good].state == SUCCEEDED
        assert worker.poll() is None
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_queued_jobs_survive_a_redis_restart(fleet: Fleet) -> None:
    if not fleet.redis_server.restartable:
        pytest.skip("VIDSTYLE_TEST_REDIS_URL names a server these tests did not start, so they do not restart it")
    job_ids = [fleet.submit(tiny_clip(fleet.storage / f"clip{i}.mp4")) for i in range(3)]
    fleet.redis_server.restart()
    assert fleet.queued_messages() == 3

    fleet.start_worker("w1")
    jobs = fleet.wait_for(job_ids)
    assert [(job.state, job.attempts) for job in jobs.values()] == [(SUCCEEDED, 1)] * 3
    for i in range(3):
        assert decode(fleet.storage / f"clip{i}.{TEST_STYLE}.mp4")["frames"] == 12


def test_twenty_jobs_on_two_workers_each_run_once(fleet: Fleet) -> None:
    sources = [tiny_clip(fleet.storage / f"clip{i:02d}.mp4") for i in range(20)]
    names = [fleet.start_worker(name)[1] for name in ("w1", "w2")]
    job_ids = [fleet.submit(source) for source in sources]

    jobs = fleet.wait_for(job_ids, timeout=300)
    assert [(job.state, job.attempts) for job in jobs.values()] == [(SUCCEEDED, 1)] * 20
    assert {job.worker for job in jobs.values()} == set(names)  # prefetch 1: the second worker got its share
    outputs = sorted(fleet.storage.glob(f"*.{TEST_STYLE}.mp4"))
    assert [p.name for p in outputs] == [f"clip{i:02d}.{TEST_STYLE}.mp4" for i in range(20)]
    assert all(decode(p)["frames"] == 12 for p in outputs)
    assert len(list(fleet.storage.iterdir())) == 40


def test_a_worker_process_keeps_loaded_styles_until_retrained(fleet: Fleet, style_dir: Path) -> None:
    from vidstyle.workers.tasks import stylizer_for

    job = Job(id="job", input="in.mp4", output="out.mp4", style=TEST_STYLE, queue=fleet.queue, codec="libx264",
              crf=18, preset="medium")
    first = stylizer_for(job, fleet.storage)
    assert stylizer_for(job, fleet.storage) is first
    weights = style_dir / f"{TEST_STYLE}.pth"
    modified = weights.stat().st_mtime_ns + 1_000_000_000
    os.utime(weights, ns=(modified, modified))  # as if a new training run had replaced the weights
    assert stylizer_for(job, fleet.storage) is not first


def test_progress_reaches_the_record_a_few_times_a_second_at_most(fleet: Fleet) -> None:
    from vidstyle.workers.tasks import JobProgress

    job = Job(id="progress-test", input="a.mp4", output="b.mp4", style=TEST_STYLE, queue=fleet.queue,
              codec="libx264", crf=18, preset="medium")
    fleet.store.create(job)
    attempt, _ = fleet.store.start_unit(job.id, "", "here", os.getpid(), {})
    progress = JobProgress(fleet.store, attempt)
    for done in range(1, 100):  # a burst of batches, far faster than 3 a second
        progress(done, 100)
    assert fleet.store.get(job.id).frames_done == 1  # the first is written, the rest of the burst is not
    progress(100, 100)
    assert fleet.store.get(job.id).frames_done == 100  # the last one always is
    assert fleet.store.end_unit(attempt, SUCCEEDED)  # (or the fleet tests that follow would take it over)


def split_clip(path: Path, frames: int = 96) -> Path:
    """Irregular keyframes, B-frames (x264's default) and a variable frame rate: the hard cases for cutting."""
    return make_sample_video(path, width=96, height=64, frames=frames, variable_frame_rate=True,
                             keyframes=[0, 9, 17, 30, 41, 55, 70, 83])


def test_an_upscale_job_split_into_segments_comes_out_factor_times_the_size(fleet: Fleet) -> None:
    source = make_sample_video(fleet.storage / "small.mp4", width=30, height=18, frames=36, keyframes=[0, 12, 24])
    fleet.start_worker("a", OMP_NUM_THREADS="1")
    job_id = fleet.submit(source, None, upscale=str(TEST_FACTOR), segment_seconds="0.5")
    job = fleet.wait_for([job_id])[job_id]
    assert job.state == SUCCEEDED, job.error
    assert (job.task, job.factor, job.style, job.segments) == ("upscale", TEST_FACTOR, "", 3)
    decoded = decode(fleet.storage / f"small.x{TEST_FACTOR}.mp4")
    assert decoded["size"] == (30 * TEST_FACTOR, 18 * TEST_FACTOR)
    assert decoded["frames"] == job.frames_total == 36
    assert decoded["times"] == pytest.approx(decode(source)["times"], abs=1e-3)
    assert len(decoded["audio_durations"]) == 1
    assert re.search(rf"task: +upscale x{TEST_FACTOR}\n", fleet.cli("status", job_id).stdout)


def test_long_job_is_split_over_two_workers_and_joined_frame_exact(fleet: Fleet) -> None:
    source = split_clip(fleet.storage / "long.mp4")
    _, first = fleet.start_worker("a", OMP_NUM_THREADS="1")
    _, second = fleet.start_worker("b", OMP_NUM_THREADS="1")
    job_id = fleet.submit(source, segment_seconds="0.5")
    job = fleet.wait_for([job_id])[job_id]
    assert job.state == SUCCEEDED, job.error
    assert job.segments >= 4 and job.frames_done == job.frames_total == 96

    workers = fleet.store.segment_workers(job_id)
    assert sorted(workers) == list(range(job.segments))
    assert set(workers.values()) == {first, second}  # both took segments
    status = fleet.cli("status", job_id).stdout
    assert re.search(rf"segments: +{job.segments} on 2 workers, joined in \d+\.\d s", status), status

    out, original = decode(fleet.storage / job.output), decode(source)
    assert out["frames"] == original["frames"] == 96
    assert out["times"] == original["times"]  # no frame lost or doubled at a cut, timestamps exact
    assert out["audio_durations"] == pytest.approx(original["audio_durations"], abs=0.03)
    assert np.abs(out["pixels"].astype(int) - original["pixels"]).mean() > 10  # stylized
    assert sorted(p.name for p in fleet.storage.iterdir()) == sorted(["long.mp4", job.output])  # segments removed


def test_cancelling_a_split_job_stops_every_segment(fleet: Fleet) -> None:
    source = split_clip(fleet.storage / "long.mp4", frames=600)
    fleet.start_worker("a", OMP_NUM_THREADS="1")
    fleet.start_worker("b", OMP_NUM_THREADS="1")
    job_id = fleet.submit(source, segment_seconds="2", batch_size=1)
    fleet.wait_running(job_id)
    assert fleet.cli("cancel", job_id).returncode == 0
    job = fleet.wait_for([job_id])[job_id]
    assert job.state == CANCELLED and job.segments >= 2 and job.frames_done < job.frames_total
    assert [p.name for p in fleet.storage.iterdir()] == ["long.mp4"]  # no output, no segment files


def test_a_segment_lost_with_the_only_worker_is_run_by_one_that_starts_later(fleet: Fleet) -> None:
    source = split_clip(fleet.storage / "long.mp4")
    first, first_name = fleet.start_worker("w1", **FAST_RECOVERY)
    job_id = fleet.submit(source, segment_seconds="0.5", batch_size=1)
    fleet.wait_running(job_id)
    fleet.kill(first)  # mid-segment: its message was never acknowledged

    _, second = fleet.start_worker("w2", **FAST_RECOVERY)
    job = fleet.wait_for([job_id])[job_id]
    assert job.state == SUCCEEDED, job.error
    assert set(fleet.store.segment_workers(job_id).values()) == {second}  # it redid the dead worker's segment
    lost = [(unit, worker) for unit, worker, outcome in outcomes(fleet, job_id) if outcome == "worker lost"]
    assert lost == [(lost[0][0], first_name)] and lost[0][0].startswith("segment:")
    out, original = decode(fleet.storage / job.output), decode(source)
    assert out["times"] == original["times"]
    assert sorted(p.name for p in fleet.storage.iterdir()) == sorted(["long.mp4", job.output])


def test_a_preempted_split_job_loses_only_its_unfinished_segment(fleet: Fleet) -> None:
    source = split_clip(fleet.storage / "long.mp4")
    first, first_name = fleet.start_worker("w1", VIDSTYLE_ON_TERM="requeue", **FAST_RECOVERY)
    job_id = fleet.submit(source, segment_seconds="0.5", batch_size=1)

    def one_done_one_running() -> list[dict] | None:
        history = fleet.store.attempt_history(job_id)
        ended = [a["outcome"] for a in history if a["unit"].startswith("segment:")]
        return history if SUCCEEDED in ended and "" in ended else None

    done_before = {a["unit"] for a in wait_until(one_done_one_running, JOB_TIMEOUT, "a segment done, the next running")
                   if a["outcome"] == SUCCEEDED}
    os.killpg(first.pid, signal.SIGTERM)  # the whole node is told to go
    first.wait(timeout=60)
    _, second_name = fleet.start_worker("w2", **FAST_RECOVERY)
    job = fleet.wait_for([job_id])[job_id]
    assert job.state == SUCCEEDED, job.error

    history = [(a["unit"], a["worker"], a["outcome"]) for a in fleet.store.attempt_history(job_id)]
    preempted = [unit for unit, _, outcome in history if outcome == "preempted"]
    assert len(preempted) == 1 and preempted[0] not in done_before
    for unit in done_before:  # finished segments are not run again
        assert [(w, outcome) for u, w, outcome in history if u == unit] == [(first_name, SUCCEEDED)]
    assert (preempted[0], second_name, SUCCEEDED) in history
    assert decode(fleet.storage / job.output)["times"] == decode(source)["times"]
    assert sorted(p.name for p in fleet.storage.iterdir()) == sorted(["long.mp4", job.output])


def test_a_segment_failing_for_good_fails_the_job_and_leaves_nothing(fleet: Fleet) -> None:
    fleet.start_worker("w1", OMP_NUM_THREADS="1", VIDSTYLE_JOB_TIME_LIMIT="4")  # each segment outlasts it
    source = make_sample_video(fleet.storage / "big.mp4", width=320, height=240, frames=192, audio=False,
                               keyframes=list(range(0, 192, 24)))
    job_id = fleet.submit(source, segment_seconds="2", batch_size=1)
    job = fleet.wait_for([job_id])[job_id]
    assert job.state == FAILED and job.segments >= 2
    assert re.fullmatch(r"segment \d+: took longer than the job time limit .*", job.error)
    # The other segments stop at their next batch, and every segment file goes.
    wait_until(lambda: [p.name for p in fleet.storage.iterdir()] == ["big.mp4"], JOB_TIMEOUT, "segment files to go")
    wait_until(lambda: fleet.queued_messages() == 0, JOB_TIMEOUT, "the other segments to be taken")
    assert fleet.store.get(job_id).state == FAILED  # a later segment's outcome changes nothing
