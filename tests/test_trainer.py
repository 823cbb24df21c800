"""The trainer on tiny inputs: a few random photos at 32 px and a randomly initialised VGG."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from PIL import Image

from vidstyle.trainer.cli import train, train_upscaler
from vidstyle.trainer.evaluate import lbfgs_iterations_to_reach
from vidstyle.trainer import losses
from vidstyle.trainer.losses import (
    FLOW_CELLS,
    LOSS_UNITS,
    MAX_FLOW_PX,
    MAX_GAIN,
    MAX_OFFSET,
    block_quantise,
    camera_effects,
    describe_motion,
    random_flow,
    random_motion,
    stability_loss,
    warp,
)
from vidstyle.trainer.config import TrainConfig
from vidstyle.trainer.upscale import UPSCALE_PIXEL_WEIGHT, degrade, load_upscaler
from vidstyle.trainer.upscale_eval import psnr, ssim
from vidstyle.trainer.vgg import TORCHVISION_CONVENTION, InputNormalization
from vidstyle.model import UpscalerNet
from vidstyle.preview import GAP, LABEL_WIDTH
from vidstyle.styles import find_style

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
CAFFE_CONVENTION = {"channel_order": "BGR", "range": "0..255", "mean_subtracted_bgr": [103.939, 116.779, 123.68], "std": None}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)

    def random_image(path: Path, width: int, height: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)

    # 9 photos in nested folders and several formats: 7 to train on, 2 held out.
    for i, suffix in enumerate(["jpg", "png", "jpeg", "webp", "jpg", "png", "jpg", "jpg", "png"]):
        random_image(root / "photos" / f"group{i % 2}" / f"photo{i}.{suffix}", 40 + 3 * i, 36 + 2 * i)
    (root / "photos" / "notes.txt").write_text("not an image")
    random_image(root / "style.png", 48, 40)

    # All 13 conv layers, so the loader must ignore those past relu4_3.
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.save(features.state_dict(), root / "vgg.pth")
    (root / "vgg.json").write_text(json.dumps({"input": CAFFE_CONVENTION}))
    return {"root": root, "photos": root / "photos", "style": root / "style.png", "vgg": root / "vgg.pth"}


def train_args(inputs: dict[str, Path], run_dir: Path, iterations: int, *extra: str) -> list[str]:
    return [
        str(inputs["style"]), "--dataset", str(inputs["photos"]), "--vgg-weights", str(inputs["vgg"]),
        "--run-dir", str(run_dir), "--name", "tiny", "--iterations", str(iterations),
        "--image-size", "32", "--style-size", "48", "--holdout", "2", "--stability-weight", "1",
        "--log-every", "1", "--sample-every", "3", "--checkpoint-every", "100", "--workers", "1", "--threads", "1",
        *extra,
    ]


def invoke(args: list[str]) -> None:
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 0, result.output + repr(result.exception)


def logged_losses(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{key: value for key, value in line.items() if key != "elapsed_s"} for line in lines]


def test_resumed_run_matches_uninterrupted_run(inputs: dict[str, Path], tmp_path: Path) -> None:
    invoke(train_args(inputs, tmp_path / "straight", 6))
    # 3 iterations of batch 4 end mid-epoch (7 training photos), so resuming must skip consumed items.
    invoke(train_args(inputs, tmp_path / "resumed", 3))
    invoke(train_args(inputs, tmp_path / "resumed", 6, "--resume"))

    straight, resumed = logged_losses(tmp_path / "straight"), logged_losses(tmp_path / "resumed")
    assert [line["iteration"] for line in resumed] == [1, 2, 3, 4, 5, 6]
    assert set(resumed[0]) == {"iteration", "content", "style", "tv", "stability", "total"}
    assert resumed == straight

    weights = [torch.load(run / "tiny.pth", weights_only=True) for run in (tmp_path / "straight", tmp_path / "resumed")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])

    style = find_style(str(tmp_path / "resumed" / "tiny.pth"))
    style.load_network()
    card = style.card
    assert card["format"] == "vidstyle-style/1" and card["name"] == "tiny" and style.name == "tiny"
    assert card["style_image"] == "style.png" and len(card["style_image_sha256"]) == 64
    assert card["dataset"] == {"name": "photos", "images": 7, "held_out": 2}
    assert card["vgg_weights"]["file"] == "vgg.pth" and card["vgg_weights"]["input"] == CAFFE_CONVENTION
    assert card["iterations"] == 6 and card["image_size"] == 32 and card["batch_size"] == 4
    for key in ("lr", "content_weight", "style_weight", "tv_weight", "stability_weight", "loss_units",
                "wall_time_s", "device", "seed", "recipe"):
        assert key in card
    assert card["final_losses"] == pytest.approx(
        {key: np.mean([line[key] for line in straight]) for key in straight[0] if key != "iteration"}, rel=1e-6
    )
    assert sorted(p.name for p in (tmp_path / "resumed" / "samples").iterdir()) == ["iter_000003.png", "iter_000006.png"]


def test_sigint_finishes_iteration_and_saves_checkpoint(inputs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "vidstyle.trainer", *train_args(inputs, run_dir, 100_000)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        log = run_dir / "log.jsonl"
        deadline = time.monotonic() + 60
        while not (log.exists() and len(log.read_text().splitlines()) >= 2):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr and "continue with --resume" in stderr
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["iteration"] == logged_losses(run_dir)[-1]["iteration"] >= 2
    assert not (run_dir / "checkpoint.pt.part").exists()


@pytest.mark.parametrize("problem, message", [
    ("missing dataset", "dataset folder not found"),
    ("empty dataset", "no images"),
    ("bad vgg", "not a readable state dict"),
    ("taken run dir", "already holds a run"),
])
def test_input_problems_are_one_line_errors(inputs: dict[str, Path], tmp_path: Path, problem: str, message: str) -> None:
    args = train_args(inputs, tmp_path / "run", 1)
    if problem == "missing dataset":
        args[args.index("--dataset") + 1] = str(tmp_path / "nowhere")
    elif problem == "empty dataset":
        (tmp_path / "empty").mkdir()
        args[args.index("--dataset") + 1] = str(tmp_path / "empty")
    elif problem == "bad vgg":
        (tmp_path / "bad.pth").write_text("not weights")
        (tmp_path / "bad.json").write_text(json.dumps({"input": CAFFE_CONVENTION}))
        args[args.index("--vgg-weights") + 1] = str(tmp_path / "bad.pth")
    else:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output and len(result.output.splitlines()) == 1


def test_input_conventions() -> None:
    pixel = torch.tensor([255.0, 128.0, 0.0]).view(1, 3, 1, 1)
    caffe = InputNormalization(CAFFE_CONVENTION)(pixel).flatten()
    assert caffe.tolist() == pytest.approx([0 - 103.939, 128 - 116.779, 255 - 123.68])
    torchvision_input = InputNormalization(TORCHVISION_CONVENTION)(pixel).flatten()
    assert torchvision_input.tolist() == pytest.approx([(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225])


def affine_grid(matrix: list[list[float]], images: torch.Tensor) -> torch.Tensor:
    return F.affine_grid(torch.tensor(matrix).expand(len(images), 2, 3), list(images.shape), align_corners=False)


def test_warp_by_identity_changes_nothing() -> None:
    images = torch.rand(2, 3, 8, 12) * 255
    warped, inside = warp(images, affine_grid([[1.0, 0, 0], [0, 1.0, 0]], images))
    assert torch.allclose(warped, images, atol=1e-3) and bool(inside.all())


def test_warp_mask_marks_the_pixels_sampled_from_outside() -> None:
    images = torch.rand(1, 3, 8, 12) * 255
    # A shift of 3 pixels to the right of where each pixel samples: the last 3 columns sample outside.
    shifted, inside = warp(images, affine_grid([[1.0, 0, 3 * 2 / 12], [0, 1.0, 0]], images))
    assert inside[0, 0, :, :9].all() and not inside[0, 0, :, 9:].any()
    assert torch.allclose(shifted[..., :9], images[..., 3:], atol=1e-3)


def test_random_flow_is_smooth_and_bounded() -> None:
    torch.manual_seed(0)
    height, width = 48, 64
    flow = random_flow(3, height, width)
    assert flow.shape == (3, 2, height, width)
    assert flow.abs().max() <= MAX_FLOW_PX and flow.abs().max() > 0.1
    assert not torch.allclose(flow[0], flow[1])  # each image moves its own way
    # Bilinear upsampling of nodes (g + 1 a side) within +-MAX_FLOW_PX, then a blur, cannot change
    # faster than from -MAX to +MAX over one cell of the finest grid.
    steepest = 2 * MAX_FLOW_PX * FLOW_CELLS[1] / (min(height, width) - 1)
    assert (flow[..., 1:] - flow[..., :-1]).abs().max() <= steepest
    assert (flow[..., 1:, :] - flow[..., :-1, :]).abs().max() <= steepest
    # Smooth: its second differences are far below those of independent per-pixel values of its size.
    curvature = (flow[..., 2:] - 2 * flow[..., 1:-1] + flow[..., :-2]).abs().mean()
    assert curvature < 0.05 * flow.abs().mean()  # per-pixel noise: more than its mean


def test_nonrigid_motion_is_the_affine_motion_plus_the_flow() -> None:
    height, width = 32, 40
    torch.manual_seed(1)
    affine = random_motion(2, height, width, "affine")
    torch.manual_seed(1)
    nonrigid = random_motion(2, height, width, "nonrigid")
    displacement_px = (nonrigid - affine) * torch.tensor([width / 2, height / 2])
    assert displacement_px.abs().max() <= MAX_FLOW_PX + 1e-4 and displacement_px.abs().max() > 0.01


def test_stability_term_is_zero_for_a_network_that_commutes_with_the_motion(monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.rand(2, 3, 32, 40) * 255

    def negative(x: torch.Tensor) -> torch.Tensor:  # per pixel, so it commutes with any warp
        return 255 - x

    pattern = torch.linspace(0, 50, 40)

    def painted(x: torch.Tensor) -> torch.Tensor:  # draws the same strokes wherever the scene moves
        return x + pattern

    monkeypatch.setattr(losses, "camera_effects", lambda frames, motion: frames)
    torch.manual_seed(0)
    assert stability_loss(negative, images, negative(images), "nonrigid") < 1e-6
    torch.manual_seed(0)
    assert stability_loss(painted, images, painted(images), "nonrigid") > 1
    monkeypatch.undo()

    # With the camera's noise, light, blur and compression, only a network that ignores its input passes.
    def constant(x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, 7.0)

    assert stability_loss(constant, images, constant(images), "nonrigid") < 1e-6
    assert stability_loss(negative, images, negative(images), "nonrigid") > 1


def test_camera_effects_change_light_smoothly_and_slightly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(losses, "NOISE_STD", 0.0)
    gray = torch.full((8, 3, 40, 48), 100.0)
    torch.manual_seed(0)
    changed = camera_effects(gray, "nonrigid")
    quantisation_px = 3  # the DC step at the coarsest scale, spread over a block
    assert (changed - gray).abs().max() <= 100 * MAX_GAIN + MAX_OFFSET + quantisation_px
    assert (changed - gray).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every frame's light changes
    assert (changed[..., 1:] - changed[..., :-1]).abs().mean() < 0.2  # smoothly: no grain without noise
    assert torch.equal(camera_effects(gray, "affine"), gray)


def test_block_quantisation_keeps_odd_sizes_and_fine_steps() -> None:
    images = torch.rand(2, 3, 13, 21) * 255
    assert torch.allclose(block_quantise(images, torch.tensor([1e-4, 1e-4])), images, atol=1e-2)
    coarse = block_quantise(images, torch.tensor([1.0, 1.0]))
    assert coarse.shape == images.shape and (coarse - images).abs().mean() > 5


def test_curriculum_resumes_across_a_stage_boundary(inputs: dict[str, Path], tmp_path: Path) -> None:
    def curriculum_args(run_dir: Path, curriculum: str, *extra: str) -> list[str]:
        args = train_args(inputs, run_dir, 1, "--curriculum", curriculum, *extra)
        return args[: args.index("--iterations")] + args[args.index("--iterations") + 2 :]

    invoke(curriculum_args(tmp_path / "straight", "32:3,40:3", "--final-lr", "1e-5"))
    # Stopped inside the first stage, then extended by a stage (and a decay of the lr over it)
    # it was not started with.
    invoke(curriculum_args(tmp_path / "resumed", "32:2"))
    invoke(curriculum_args(tmp_path / "resumed", "32:3,40:3", "--final-lr", "1e-5", "--resume"))
    assert logged_losses(tmp_path / "resumed") == logged_losses(tmp_path / "straight")
    card = json.loads((tmp_path / "resumed" / "tiny.json").read_text())
    assert card["curriculum"] == [[32, 3], [40, 3]] and card["image_size"] == 40 and card["iterations"] == 6
    assert card["precision"] in ("bf16", "fp32") and card["final_lr"] == 1e-5
    assert "cosine decay to 1e-05 over the last 3 iterations" in card["recipe"]

    result = CliRunner().invoke(train, curriculum_args(tmp_path / "resumed", "32:3,40:4", "--final-lr", "1e-5", "--resume"))
    assert result.exit_code == 1 and "learning rate 1e-05 at iteration 6" in result.output

    result = CliRunner().invoke(train, curriculum_args(tmp_path / "resumed", "40:6,48:2", "--resume"))
    assert result.exit_code == 1 and "crop sizes of iterations 1..6" in result.output


def test_checkpoint_from_before_stability_motion_resumes_as_affine(inputs: dict[str, Path], tmp_path: Path) -> None:
    invoke(train_args(inputs, tmp_path / "run", 1, "--stability-motion", "affine"))
    checkpoint_path = tmp_path / "run" / "checkpoint.pt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    del checkpoint["identity"]["stability_motion"]
    torch.save(checkpoint, checkpoint_path)
    result = CliRunner().invoke(train, train_args(inputs, tmp_path / "run", 2, "--resume", "--stability-motion", "nonrigid"))
    assert result.exit_code == 1 and "stability_motion 'affine' (now 'nonrigid')" in result.output
    invoke(train_args(inputs, tmp_path / "run", 2, "--resume"))


def test_learning_rate_decays_over_the_last_stage() -> None:
    config = TrainConfig(style_image=Path("s.png"), dataset=Path("d"), run_dir=Path("r"), output=Path("o.pth"), name="s",
                         curriculum=((32, 3), (40, 5)), lr=1e-3, final_lr=1e-5)
    rates = [config.lr_at(i) for i in range(1, 9)]
    assert rates[:4] == [1e-3] * 4 and rates[-1] == pytest.approx(1e-5)
    assert rates[5] == pytest.approx((1e-3 + 1e-5) / 2) and rates[3] > rates[4] > rates[5] > rates[6] > rates[7]
    config.final_lr = None
    assert {config.lr_at(i) for i in range(1, 9)} == {1e-3}


def test_fine_tuning_starts_from_a_trained_style(inputs: dict[str, Path], tmp_path: Path) -> None:
    invoke(train_args(inputs, tmp_path / "parent", 2, "--stability-motion", "nonrigid"))
    parent = tmp_path / "parent" / "tiny.pth"
    # An lr too small to move fp16 weights: the child must come out as its parent.
    invoke(train_args(inputs, tmp_path / "child", 1, "--init-from", str(parent), "--lr", "1e-30",
                      "--stability-motion", "affine"))
    weights = [torch.load(run / "tiny.pth", weights_only=True) for run in (tmp_path / "parent", tmp_path / "child")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    card = json.loads((tmp_path / "child" / "tiny.json").read_text())
    assert card["initialized_from"]["name"] == "tiny" and card["initialized_from"]["iterations"] == 2
    assert card["recipe"].startswith("Started from the weights of style tiny (2 iterations: ")
    parent_card = json.loads((tmp_path / "parent" / "tiny.json").read_text())
    assert parent_card["initialized_from"] is None
    assert parent_card["stability_motion"] == "nonrigid" and "non-rigid flow" in parent_card["recipe"]
    assert "stylize(camera(warp(x)))" in parent_card["loss_units"]
    # The motion of the styles trained before "nonrigid": their cards' texts stay true.
    assert card["stability_motion"] == "affine" and card["loss_units"] == LOSS_UNITS
    assert card["recipe"].endswith(f"Temporal stability term: {describe_motion('affine')}.")

    result = CliRunner().invoke(train, train_args(inputs, tmp_path / "child2", 1, "--init-from", "no-such-style"))
    assert result.exit_code == 1 and "unknown style 'no-such-style'" in result.output


def test_quality_eval_compares_with_lbfgs(inputs: dict[str, Path], tmp_path: Path) -> None:
    invoke(train_args(inputs, tmp_path / "run", 2))
    args = ["eval", "quality", "--style", tmp_path / "run" / "tiny.pth", "--images", inputs["photos"],
            "--held-out", "2", "--style-image", inputs["style"], "--vgg-weights", inputs["vgg"], "--size", "32",
            "--max-iterations", "40", "--threads", "1"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["image", "objective"] and lines[-1].split()[0] == "median"
    assert [line.split()[0] for line in lines[1:-1]] == ["photo5.png", "photo7.jpg"]  # the 2 held out: last by path
    for line in lines[1:]:
        objective, style_loss, from_noise, from_content = line.split()[1:]
        assert float(objective) > 0 and float(style_loss) > 0
        assert from_noise == ">40" or 0 < float(from_noise) <= 40

    other_image = tmp_path / "other.png"
    Image.new("RGB", (48, 40), "red").save(other_image)
    result = run_cli(*args[:-8], "--style-image", other_image, *args[-6:])
    assert result.returncode == 1 and result.stderr.startswith("vidstyle: error:") and "sha256" in result.stderr


def test_lbfgs_iteration_count() -> None:
    target = torch.linspace(0, 1, 16)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2).sum() + 0.1 * (x ** 4).sum()

    start = torch.zeros(16)
    initial = objective(start).item()
    assert lbfgs_iterations_to_reach(objective, start, initial, 50) == 0
    assert lbfgs_iterations_to_reach(objective, start, -1.0, 50) is None
    counts = [lbfgs_iterations_to_reach(objective, start, initial * fraction, 50) for fraction in (0.5, 0.3, 0.2)]
    assert all(count is not None for count in counts) and 0 < counts[0] <= counts[1] <= counts[2]


def upscaler_args(inputs: dict[str, Path], run_dir: Path, iterations: int, *extra: str) -> list[str]:
    return [
        "--factor", "4", "--dataset", str(inputs["photos"]), "--vgg-weights", str(inputs["vgg"]),
        "--run-dir", str(run_dir), "--curriculum", f"24:2,32:{iterations - 2}", "--final-lr", "1e-4", "--holdout", "2",
        "--log-every", "1", "--sample-every", "3", "--checkpoint-every", "100", "--workers", "1", "--threads", "1",
        *extra,
    ]


def test_resumed_upscaler_run_matches_uninterrupted_run(inputs: dict[str, Path], tmp_path: Path) -> None:
    def invoke_upscaler(args: list[str]) -> None:
        result = CliRunner().invoke(train_upscaler, args)
        assert result.exit_code == 0, result.output + repr(result.exception)

    invoke_upscaler(upscaler_args(inputs, tmp_path / "straight", 5))
    invoke_upscaler(upscaler_args(inputs, tmp_path / "resumed", 3))
    invoke_upscaler(upscaler_args(inputs, tmp_path / "resumed", 5, "--resume"))

    straight, resumed = logged_losses(tmp_path / "straight"), logged_losses(tmp_path / "resumed")
    assert [line["iteration"] for line in resumed] == [1, 2, 3, 4, 5]
    assert set(resumed[0]) == {"iteration", "feature", "pixel", "tv", "total"}
    assert resumed == straight
    weights = [torch.load(run / "x4.pth", weights_only=True) for run in (tmp_path / "straight", tmp_path / "resumed")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert all(value.dtype == torch.float16 for value in weights[0].values())
    UpscalerNet(4).load_state_dict({key: value.float() for key, value in weights[0].items()})

    card = json.loads((tmp_path / "resumed" / "x4.json").read_text())
    assert card["task"] == "upscale" and card["factor"] == 4 and card["format"] == "vidstyle-upscaler/1"
    assert card["curriculum"] == [[24, 2], [32, 3]] and card["iterations"] == 5
    assert card["pixel_weight"] == UPSCALE_PIXEL_WEIGHT and "blur of sigma 1" in card["recipe"]
    # Rows of (bicubic, network, original) at the sample size, 2 pixels of padding around each.
    with Image.open(tmp_path / "resumed" / "samples" / "iter_000005.png") as grid:
        assert grid.size == (3 * 258 + 2, 2 * 258 + 2)

    # Fine-tuning: an lr too small to move fp16 weights, so the child must come out as its parent.
    invoke_upscaler(upscaler_args(inputs, tmp_path / "child", 3, "--init-from", str(tmp_path / "straight" / "x4.pth"),
                                  "--lr", "1e-30", "--final-lr", "0", "--pixel-weight", "10"))
    child = torch.load(tmp_path / "child" / "x4.pth", weights_only=True)
    assert all(torch.equal(weights[0][key], child[key]) for key in child)
    child_card = json.loads((tmp_path / "child" / "x4.json").read_text())
    assert child_card["initialized_from"]["file"] == "x4.pth" and child_card["initialized_from"]["iterations"] == 5
    assert child_card["recipe"].startswith("Started from the weights x4.pth (5 iterations: ") and child_card["pixel_weight"] == 10

    # Deepened: the parent's weights and new residual blocks that start as the identity; and
    # moved to bilinear upsampling with the phase comb, which the card (or a checkpoint) records for loading.
    invoke_upscaler(upscaler_args(inputs, tmp_path / "deeper", 3, "--init-from", str(tmp_path / "straight" / "x4.pth"),
                                  "--lr", "1e-30", "--final-lr", "0", "--blocks", "6", "--upsampling", "bilinear", "--comb"))
    deeper = torch.load(tmp_path / "deeper" / "x4.pth", weights_only=True)
    assert all(torch.equal(weights[0][key], deeper[key]) for key in weights[0])
    assert not deeper["residuals.5.body.1.conv.weight"].any() and UpscalerNet.blocks_in(deeper) == 6
    deeper_card = json.loads((tmp_path / "deeper" / "x4.json").read_text())
    assert deeper_card["residual_blocks"] == 6 and deeper_card["upsampling"] == "bilinear" and deeper_card["comb"]
    for saved in ("x4.pth", "checkpoint.pt"):
        loaded = load_upscaler(tmp_path / "deeper" / saved, 4)
        assert len(loaded.residuals) == 6 and loaded.upsampling == "bilinear" and loaded.comb is not None
    result = CliRunner().invoke(train_upscaler, upscaler_args(inputs, tmp_path / "shallower", 3, "--init-from",
                                                              str(tmp_path / "deeper" / "x4.pth"), "--blocks", "4"))
    assert result.exit_code == 1 and "x4.pth has 6 residual blocks already" in result.output

    result = CliRunner().invoke(train_upscaler, upscaler_args(inputs, tmp_path / "odd", 3, "--curriculum", "30:3"))
    assert result.exit_code == 1 and "multiples of the factor 4 and at least 20: not 30" in result.output


def test_degradation_blurs_then_downsamples() -> None:
    flat = torch.full((1, 3, 16, 24), 77.0)
    assert torch.equal(degrade(flat, 4), torch.full((1, 3, 4, 6), 77.0))
    # A one-pixel checkerboard is above the low-resolution Nyquist limit: it must average out, not alias.
    checkerboard = (torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 255.0
    small = degrade(checkerboard.expand(1, 3, 32, 32), 4)
    assert small.shape == (1, 3, 8, 8) and (small - 127.5).abs().max() <= 3


@pytest.fixture(scope="module")
def test_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two smooth HR images, the first with a published x4 input that fits, the second with one that does not."""
    folder = tmp_path_factory.mktemp("sets") / "Set2"
    folder.mkdir()
    ys, xs = np.mgrid[0:44, 0:52].astype(np.float32)
    for index, (period, lr_size) in enumerate([(5, (13, 11)), (9, (10, 10))], start=1):
        hr = np.stack([128 + 100 * np.sin(xs / period), 128 + 90 * np.cos(ys / period), 128 + 60 * np.sin((xs + ys) / 7)], -1)
        image = Image.fromarray(hr.clip(0, 255).astype(np.uint8))
        image.save(folder / f"img_{index}_HR.png")
        image.resize(lr_size, Image.Resampling.BICUBIC).save(folder / f"img_{index}_LR.png")
    return folder


def test_upscale_eval_compares_with_bicubic(inputs: dict[str, Path], test_set: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "x4.pth"
    torch.save({key: value.half() for key, value in UpscalerNet(4).state_dict().items()}, weights)
    (tmp_path / "x4.json").write_text(json.dumps({"task": "upscale", "factor": 4}))
    sheet = tmp_path / "sheet.png"
    result = run_cli("eval", "upscale", "--factor", "4", "--weights", weights, "--set", test_set,
                     "--vgg-weights", inputs["vgg"], "--sheet", sheet, "--record", "--threads", "1")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:5]]
    # The published input of the second image does not fit x4: only the first is measured with it.
    assert [row[:4] for row in rows] == [["Set2", "published", "1", "bicubic"], ["Set2", "published", "1", "network"],
                                         ["Set2", "blur+bicubic", "2", "bicubic"], ["Set2", "blur+bicubic", "2", "network"]]
    # Columns: set, inputs, images, method, PSNR, SSIM, feature, /bicubic, grid (none on images this small), texture.
    assert rows[0][7] == rows[2][7] == "1.000" and all(row[8] == "-" for row in rows)
    assert rows[0][9] == rows[2][9] == "-" and float(rows[1][9]) >= 0 and float(rows[3][9]) >= 0
    assert float(rows[1][7]) != 1.0 and float(rows[1][4]) != float(rows[0][4])  # random weights add visible detail
    for row in rows:
        assert 5 < float(row[4]) < 60 and 0 < float(row[5]) <= 1 and float(row[6]) > 0

    card = json.loads((tmp_path / "x4.json").read_text())
    assert card["task"] == "upscale" and card["evaluation"]["command"].startswith("vidstyle eval upscale --factor 4")
    scores = card["evaluation"]["scores"]
    assert [(s["inputs"], s["method"]) for s in scores] == [tuple(row[1:4:2]) for row in rows]
    assert scores[1]["psnr"] == pytest.approx(float(rows[1][4]), abs=0.005)
    # One row per image: the zoomed crops of bicubic, network and original.
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.size == (LABEL_WIDTH + 3 * (192 + GAP), 2 * (192 + GAP) + GAP)
        crops = np.asarray(image.convert("RGB"))[GAP : GAP + 192, LABEL_WIDTH:].reshape(192, 3, 192 + GAP, 3)[:, :, :192]
        assert np.abs(crops[:, 0].astype(int) - crops[:, 2]).mean() > 1  # bicubic is not the original

    result = run_cli("eval", "upscale", "--factor", "4", "--weights", weights, "--set", tmp_path / "nowhere")
    assert result.returncode == 1 and result.stderr.startswith("vidstyle: error:") and "no *_HR.png" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_psnr_and_ssim() -> None:
    torch.manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    image = (128 + 50 * torch.sin(xs / 5) * torch.cos(ys / 7))[None, None]
    assert ssim(image, image) == pytest.approx(1.0) and psnr(image + 1, image) == pytest.approx(48.13, abs=0.01)
    noisy = image + torch.randn(image.shape) * 20
    assert 0 < ssim(noisy, image) < ssim(image + torch.randn(image.shape) * 5, image) < 1
    # SSIM compares structure, not only the error: a uniform offset costs little of it, noise of the same MSE much.
    assert ssim(image + 20, image) > 0.9 > ssim(noisy, image)
