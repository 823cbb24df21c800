"""Training on the fleet (`vidstyle train --submit`) with real parts: a real redis-server, workers in
their own processes, the `vidstyle` command as a user runs it, and tiny inputs: a few random photos at
40 px, a painting, and VGG-16 weights of random values (the shapes are all the loss network needs)."""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import test_fleet
from conftest import TEST_STYLE, decode, wait_until
from test_fleet import FAST_RECOVERY, JOB_TIMEOUT, Fleet, fleet, outcomes, tiny_clip  # noqa: F401 (a fixture)
from test_trainer import CAFFE_CONVENTION, inputs  # noqa: F401 (a fixture)
from vidstyle.trainer.config import TrainConfig
from vidstyle.trainer.train import STOPPED_BY_CALLER, train
from vidstyle.workers.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED

PHOTOS = 6


def write_inputs(storage: Path) -> dict[str, Path]:
    """Photos and VGG weights under the storage root, where the fleet reads them; the painting anywhere."""
    rng = np.random.default_rng(0)
    (storage / "photos").mkdir()
    for index in range(PHOTOS):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(storage / "photos" / f"p{index}.png")
    painting = storage.parent / "painting.png"
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(painting)
    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features[:23]  # up to relu4_3: what the losses read
    torch.save({key: value.half() for key, value in features.state_dict().items()}, storage / "vgg.pth")
    (storage / "vgg.json").write_text(json.dumps({"input": CAFFE_CONVENTION}))
    return {"photos": storage / "photos", "painting": painting, "vgg": storage / "vgg.pth"}


def train_args(fleet: Fleet, inputs: dict[str, Path], name: str, curriculum: str, *extra: object) -> list[object]:
    return ["train", inputs["painting"], "--submit", "--queue", fleet.queue, "--name", name,
            "--dataset", inputs["photos"], "--curriculum", curriculum, "--batch-size", "2", "--holdout", "1",
            "--checkpoint-every", "10", "--sample-every", "10", *extra]


def assert_refused(result, expected: str) -> None:
    """One line on stderr, as the trainer's commands say it, and no traceback."""
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"Error: {result.stderr.strip().removeprefix('Error: ')}"]
    assert expected in result.stderr, result.stderr


def submitted(result) -> str:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def status(fleet: Fleet, job_id: str) -> dict:
    return json.loads(fleet.cli("status", job_id, "--json").stdout)


def test_a_training_survives_its_worker_s_death_and_is_published_to_every_client(fleet: Fleet) -> None:
    inputs = write_inputs(fleet.storage)
    with_vgg = {**FAST_RECOVERY, "VIDSTYLE_VGG_WEIGHTS": str(inputs["vgg"])}  # the workers' own setting
    first, first_name = fleet.start_worker("w1", **with_vgg)
    job_id = submitted(fleet.cli(*train_args(fleet, inputs, "fleetstyle", "32:80"), "--json"))

    # Its iterations show in status --json, beside the attempts; killed past a checkpoint.
    running = wait_until(lambda: (s := status(fleet, job_id))["iteration"] >= 25 and s, JOB_TIMEOUT, "iteration 25")
    assert (running["state"], running["iterations"], running["attempts"], running["task"]) == (RUNNING, 80, 1, "train")
    assert set(running["losses"]) == {"content", "style", "tv", "stability", "total"}
    assert running["iterations_per_second"] > 0 and running["sample"].startswith(f".training/{job_id}/samples/")
    fleet.kill(first)  # SIGKILL to the worker and its pool: as if the node died
    killed_at = time.time()
    run_dir = fleet.storage / ".training" / job_id
    second, second_name = fleet.start_worker("w2", **with_vgg)

    job = fleet.wait_for([job_id])[job_id]
    assert (job.state, job.attempts, job.worker, job.iteration) == (SUCCEEDED, 2, second_name, 80), job.error
    assert outcomes(fleet, job_id) == [("", first_name, "worker lost"), ("", second_name, SUCCEEDED)]
    # Resumed from its checkpoint (iteration 20 or later), not from 0: the first sample grids are the dead worker's.
    assert all((run_dir / "samples" / f"iter_{n:06d}.png").stat().st_mtime < killed_at for n in (10, 20))
    assert (run_dir / "samples" / "iter_000080.png").stat().st_mtime > killed_at

    # Published: listed by a client that shares the storage, with its card.
    listed = fleet.cli("styles")
    assert "fleetstyle" in listed.stdout and str(fleet.storage / "styles" / "fleetstyle.pth") in listed.stdout
    card = json.loads((fleet.storage / "styles" / "fleetstyle.json").read_text())
    assert card["job"] == {"id": job_id, "attempts": 2, "dataset": "photos"}
    assert card["style_image"] == "painting.png"
    assert card["style_image_sha256"] == hashlib.sha256(inputs["painting"].read_bytes()).hexdigest()
    assert card["curriculum"] == [[32, 80]] and card["stability_weight"] == 200 and card["iterations"] == 80
    assert card["device"] == "cpu" and card["wall_time_s"] > 0 and card["recipe"]
    assert not list((fleet.storage / "styles").glob(".*part"))

    # The same as an uninterrupted run here.
    local = [arg for arg in train_args(fleet, inputs, "fleetstyle", "32:80") if arg not in ("--submit", "--queue", fleet.queue)]
    here = fleet.cli(*local, "--vgg-weights", inputs["vgg"], "--run-dir", fleet.storage.parent / "here", "--threads", "1",
                     "--workers", "0")
    assert here.returncode == 0, here.stderr
    weights = [torch.load(path, weights_only=True) for path in
               (fleet.storage / "styles" / "fleetstyle.pth", fleet.storage.parent / "here" / "fleetstyle.pth")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    # ...and used at once by a worker that was running already.
    clip = tiny_clip(fleet.storage / "clip.mp4")
    used = fleet.cli("submit", clip, "--style", "fleetstyle", "--queue", fleet.queue, "--wait")
    assert used.returncode == 0, used.stderr
    original, styled = decode(clip), decode(fleet.storage / "clip.fleetstyle.mp4")
    assert (styled["frames"], styled["times"], styled["size"]) == (original["frames"], original["times"], original["size"])


def test_cancel_keeps_the_checkpoint_an_upscaler_trains_and_no_vgg_weights_is_one_line(fleet: Fleet) -> None:
    inputs = write_inputs(fleet.storage)
    fleet.start_worker("w1", OMP_NUM_THREADS="1")  # no VGG-16 weights of its own
    unweighted = submitted(fleet.cli(*train_args(fleet, inputs, "noweights", "32:20"), "--json"))
    job = fleet.wait_for([unweighted])[unweighted]
    assert job.state == FAILED and "VIDSTYLE_VGG_WEIGHTS" in job.error and "--vgg-weights" in job.error
    assert "\n" not in job.error

    # The weights named with the job, under the storage root; a long run, cancelled once it has begun.
    job_id = submitted(fleet.cli(*train_args(fleet, inputs, "cancelled", "32:100000", "--vgg-weights", inputs["vgg"]),
                                 "--json"))
    wait_until(lambda: status(fleet, job_id)["iteration"] >= 12, JOB_TIMEOUT, "iteration 12")
    tiny_clip(fleet.storage / "clip.mp4")
    listed = fleet.cli("list").stdout
    assert "train cancelled" in listed and "/100000 it (" in listed
    shown = fleet.cli("status", job_id).stdout
    assert re.search(r"speed: +[\d.]+ it/s, ETA \d+ s", shown) and f"sample:    .training/{job_id}/samples/" in shown, shown
    assert re.search(r"losses: +content [\d.e+]+, style", shown), shown
    assert fleet.cli("cancel", job_id).returncode == 0
    watched = fleet.cli("watch", job_id)
    assert watched.returncode == 3, watched.stderr
    stopped = status(fleet, job_id)
    assert stopped["state"] == CANCELLED
    checkpoint = torch.load(fleet.storage / ".training" / job_id / "checkpoint.pt", weights_only=True)
    assert checkpoint["iteration"] >= stopped["iteration"] >= 12  # written at the iteration it stopped
    assert not (fleet.storage / "styles" / "cancelled.pth").exists()

    # An upscaler trains the same way, and replaces x4 for the clients that share the storage.
    upscaler = fleet.cli("train-upscaler", "--factor", "4", "--submit", "--queue", fleet.queue, "--name", "x4-fleet",
                         "--dataset", inputs["photos"], "--curriculum", "32:4", "--holdout", "1", "--batch-size", "2",
                         "--vgg-weights", inputs["vgg"], "--wait")
    assert upscaler.returncode == 0, upscaler.stderr
    assert upscaler.stdout.splitlines()[-1] == str(fleet.storage / "styles" / "x4-fleet.pth")
    assert re.search(rf"x4 upscaler .*{re.escape(str(fleet.storage / 'styles' / 'x4-fleet.pth'))}", fleet.cli("styles").stdout)


@pytest.mark.parametrize("case, expected", [
    ("taken", "exists"),
    ("path", "is not a style name"),
    ("not an image", "cannot read image"),
    ("outside", "outside the storage root"),
    ("empty", "no images"),
    ("too few", "fewer than a batch of 8"),
])
def test_submit_refuses_a_bad_training_and_queues_nothing(fleet: Fleet, tmp_path: Path, case: str, expected: str) -> None:
    inputs = write_inputs(fleet.storage)
    (fleet.storage / "empty").mkdir()
    (tmp_path / "notes.png").write_text("not an image")
    args = {
        "taken": train_args(fleet, inputs, TEST_STYLE, "32:10"),
        "path": train_args(fleet, inputs, "../evil", "32:10"),
        "not an image": ["train", tmp_path / "notes.png", *train_args(fleet, inputs, "x", "32:10")[2:]],
        "outside": [*train_args(fleet, inputs, "x", "32:10"), "--dataset", tmp_path],
        "empty": [*train_args(fleet, inputs, "x", "32:10"), "--dataset", fleet.storage / "empty"],
        "too few": [*train_args(fleet, inputs, "x", "32:10"), "--batch-size", "8"],
    }[case]
    assert_refused(fleet.cli(*args), expected)
    assert fleet.queued_messages() == 0 and not [job for job in fleet.store.recent(1000) if job.queue == fleet.queue]


def test_force_queues_a_training_of_a_taken_name(fleet: Fleet) -> None:
    inputs = write_inputs(fleet.storage)
    job = json.loads(fleet.cli(*train_args(fleet, inputs, TEST_STYLE, "32:10"), "--force", "--json").stdout)
    assert (job["replace"], job["style"], job["output"], job["iterations"]) == (True, TEST_STYLE, f"styles/{TEST_STYLE}.pth", 10)
    assert job["recipe"]["curriculum"] == [[32, 10]] and job["recipe"]["stability_weight"] == 200
    assert fleet.queued_messages() == 1


def test_the_default_recipe_is_the_built_ins_and_paper_is_the_paper_s(fleet: Fleet) -> None:
    inputs = write_inputs(fleet.storage)
    base = ["--submit", "--queue", fleet.queue, "--dataset", inputs["photos"], "--holdout", "1", "--json"]
    default = json.loads(fleet.cli("train", inputs["painting"], "--name", "a", *base).stdout)["recipe"]
    assert (default["curriculum"], default["final_lr"], default["batch_size"], default["lr"]) == \
        ([[128, 1600], [256, 200]], 1e-5, 4, 1e-3)
    assert (default["stability_weight"], default["style_weight"], default["style_size"]) == (200, 2e-4, None)
    paper = json.loads(fleet.cli("train", inputs["painting"], "--name", "b", "--recipe", "paper", *base).stdout)
    assert (paper["recipe"]["curriculum"], paper["recipe"]["final_lr"], paper["iterations"]) == ([[256, 40000]], None, 40000)
    upscaler = json.loads(fleet.cli("train-upscaler", "--factor", "4", "--name", "x4-fleet", *base).stdout)
    assert (upscaler["task"], upscaler["factor"], upscaler["painting"], upscaler["output"]) == \
        ("train-upscaler", 4, "", "styles/x4-fleet.pth")
    misused = fleet.cli("train", inputs["painting"], *base, "--device", "cpu")  # a usage error: click's status 2
    assert misused.returncode == 2 and "Error: --device: a worker decides" in misused.stderr
    assert [job.style for job in fleet.store.recent(1000) if job.queue == fleet.queue] == ["x4-fleet", "b", "a"]


def test_the_loop_reports_each_iteration_stops_when_asked_and_checkpoints_by_time(inputs: dict, tmp_path: Path) -> None:
    # The hook a training job runs the loop with (vidstyle.workers.training), on the trainer's tiny inputs.
    run_dir = tmp_path / "run"
    config = TrainConfig(style_image=inputs["style"], dataset=inputs["photos"], vgg_weights=inputs["vgg"],
                         run_dir=run_dir, output=run_dir / "tiny.pth", name="tiny", image_size=32, iterations=6,
                         holdout=2, sample_every=2, checkpoint_every=100, checkpoint_seconds=1e-9, workers=0, threads=1)
    seen = []

    def on_iteration(progress) -> bool:
        checkpoint = run_dir / "checkpoint.pt"
        seen.append((progress.iteration, progress.iterations, progress.sample and progress.sample.name,
                     checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["iteration"]))
        return progress.iteration == 3

    assert train(config, on_iteration) == STOPPED_BY_CALLER
    # Each iteration's checkpoint comes after its report: past the time bound, every iteration has one.
    assert seen == [(1, 6, None, False), (2, 6, "iter_000002.png", 1), (3, 6, "iter_000002.png", 2)]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"] == 3
    assert not (run_dir / "tiny.pth").exists()


def test_a_worker_refuses_training_jobs_crafted_in_the_store(fleet: Fleet, tmp_path: Path) -> None:
    # Whoever can write to Redis can write a job record: each of these fails with its reason before the
    # worker reads a photo or writes a file for it; nothing in or outside the storage root changes.
    import secrets

    from vidstyle.workers.celeryconfig import TASK_NAME, TRAIN_TASK_NAME
    from vidstyle.workers.client import enqueue, store_painting
    from vidstyle.workers.jobs import Job

    inputs = write_inputs(fleet.storage)
    painting = store_painting(inputs["painting"], fleet.storage)
    outside = tmp_path / "outside"
    (outside / "photos").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(outside / "photos" / "secret.png")
    (fleet.storage / "photo-link").symlink_to(outside / "photos")
    (fleet.storage / "mixed").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(fleet.storage / "mixed" / "mine.png")
    (fleet.storage / "mixed" / "theirs.png").symlink_to(outside / "photos" / "secret.png")
    before = {"storage": test_fleet.snapshot(fleet.storage), "outside": test_fleet.snapshot(outside)}
    recipe = {"curriculum": [[32, 4]], "batch_size": 1, "holdout": 0}

    def craft(task_name: str = TRAIN_TASK_NAME, **fields: object) -> str:
        job = Job(**{"id": secrets.token_hex(6), "input": "photos", "output": "styles/crafted.pth", "style": "crafted",
                     "queue": fleet.queue, "codec": "", "crf": 0, "preset": "", "task": "train", "painting": painting,
                     "vgg_weights": "vgg.pth", "recipe": json.dumps(recipe), **fields})
        fleet.store.create(job)
        enqueue(job, fleet.store, task_name)
        return job.id

    expected = {
        craft(style="../evil", output="styles/../evil.pth"): "is not a style name",
        craft(output="keep.pth"): "a training publishes styles/crafted.pth, not 'keep.pth'",
        craft(painting=str(inputs["painting"])): "is not a painting's copy",
        craft(input="../outside/photos"): "not inside the storage root",
        craft(input="photo-link"): "outside the storage root through a symlink",
        craft(input="mixed"): "photo theirs.png of 'mixed' leads outside the storage root",
        craft(vgg_weights="../outside/vgg.pth"): "not inside the storage root",
        craft(vgg_weights="/etc/passwd"): "are not a .pth file",
        craft(recipe=json.dumps({**recipe, "vgg_weights": "/x.pth"})): "'vgg_weights' is no setting of a train job",
        craft(recipe=json.dumps({**recipe, "init_from": "../outside/x"})): "is not a style name",
        craft(recipe=json.dumps({**recipe, "curriculum": [[32, 10**12]]})): "iterations 1000000000000 is not a whole number",
        craft(recipe=json.dumps({**recipe, "lr": "NaN"})): "lr 'NaN' is not a number",
        craft(recipe="[]"): "not a JSON object with a curriculum",
        craft(task="train-upscaler", factor=3, painting=""): "an upscaler's training names a factor",
        craft(TASK_NAME): "task 'train' is not a stylizing job's",
        craft(task="style", style=TEST_STYLE, output="out.mp4", input="clip.mp4"): "task 'style' is not a training's",
    }
    fleet.start_worker("w1", OMP_NUM_THREADS="1")
    jobs = fleet.wait_for(list(expected))
    for job_id, reason in expected.items():
        assert jobs[job_id].state == FAILED and reason in jobs[job_id].error, (reason, jobs[job_id].error)
    assert {"storage": test_fleet.snapshot(fleet.storage), "outside": test_fleet.snapshot(outside)} == before


def test_publishing_replaces_a_style_only_when_the_job_was_forced(fleet: Fleet) -> None:
    from vidstyle.errors import VidstyleError
    from vidstyle.model import TransformerNet
    from vidstyle.styles import find_style, save_style
    from vidstyle.workers.jobs import Job
    from vidstyle.workers.training import publish

    def trained(job_id: str, **fields: object) -> Job:
        return Job(id=job_id, input="photos", output="styles/look.pth", style="look", queue=fleet.queue, codec="",
                   crf=0, preset="", task="train", **fields)

    run_dir = fleet.storage / ".training" / "job1"
    config = TrainConfig(dataset=Path("photos"), run_dir=run_dir, output=run_dir / "look.pth", name="look")
    torch.manual_seed(0)
    save_style(TransformerNet(), config.output, {"name": "look", "style_image": "0f3a.png"})
    publish(config, trained("job1", painting_name="sunset.jpg", attempts=2), fleet.storage)
    assert find_style("look").card == {"name": "look", "style_image": "sunset.jpg",
                                       "job": {"id": "job1", "attempts": 2, "dataset": "photos"}}
    published = (fleet.storage / "styles" / "look.pth").read_bytes()

    with pytest.raises(VidstyleError, match="published while this job ran; its weights are in .training/job1/look.pth"):
        publish(config, trained("job2"), fleet.storage)
    assert find_style("look").card["job"]["id"] == "job1"
    save_style(TransformerNet(), config.output, {"name": "look"})  # another training's weights
    publish(config, trained("job3", replace=True), fleet.storage)
    assert find_style("look").card["job"]["id"] == "job3"
    assert (fleet.storage / "styles" / "look.pth").read_bytes() != published
    assert sorted(p.name for p in (fleet.storage / "styles").iterdir()) == ["look.json", "look.pth"]
