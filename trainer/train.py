"""The training loop: Adam on the weighted loss terms, with a log, sample grids and resumable checkpoints.

One loop for every kind of network: an objective (vidstyle.trainer.style for styles,
vidstyle.trainer.distill for a style's compact network, vidstyle.trainer.arbitrary for any painting, vidstyle.trainer.upscale for super-resolution) brings the network, the loss terms of
a batch, the sample grids and its part of the model card.

A run directory holds checkpoint.pt (the latest, written atomically),
log.jsonl (one JSON object per --log-every iterations) and samples/ (grids of
held-out photos, as the objective draws them). A resumed run reproduces the
losses of an uninterrupted one exactly: the checkpoint holds the model, the
optimizer, every random generator and the data stream position.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vidstyle.trainer.arbitrary import ArbitraryStyleObjective
from vidstyle.trainer.config import TrainConfig
from vidstyle.trainer.distill import DistillObjective
from vidstyle.trainer.data import find_images, load_sample_photos, training_batches
from vidstyle.trainer.style import StyleObjective
from vidstyle.trainer.upscale import UpscaleObjective
from vidstyle.trainer.vgg import LossNetwork, load_loss_network
from vidstyle.errors import VidstyleError
from vidstyle.inference import has_native_bf16
from vidstyle.memory import keep_freed_memory
from vidstyle.styles import save_style

SAMPLE_COUNT = 4
# Sample grids are shown at one size whatever the training size, so runs compare.
SAMPLE_SIZE = 256
# The model card's final losses average this many iterations: single batches are noisy.
FINAL_LOSS_WINDOW = 50


# Settings a resumed run must share with the checkpoint, or it would not continue the same run.
# (The crop size schedule must agree up to the checkpoint; later stages may change.)
# The objective adds its own (vidstyle.trainer.style.STYLE_IDENTITY, vidstyle.trainer.upscale.UPSCALE_IDENTITY).
RUN_IDENTITY = ("batch_size", "lr", "holdout", "seed")
# What a checkpoint written before a setting existed trained with.
IDENTITY_BEFORE = {"stability_motion": "affine", "grid_weight": 0.0, "texture_weight": 0.0, "detail_blocks": 0,
                   "dense_blocks": False}
# What train() returns when its on_iteration asked it to stop (a signal returns its number).
STOPPED_BY_CALLER = 0


@dataclass(frozen=True)
class TrainingProgress:
    """What the loop tells its on_iteration after each iteration (a fleet job's record shows it)."""

    iteration: int
    iterations: int
    losses: dict[str, float]
    elapsed_s: float  # of the whole run, resumed attempts included
    sample: Path | None  # the latest sample grid, None before the first


class StopOnSignal:
    """Turns the first SIGINT or SIGTERM into a request to stop after the current
    iteration; a second one acts as it normally would."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> StopOnSignal:
        self.signum: int | None = None
        self.previous = {signum: signal.signal(signum, self._request) for signum in self.SIGNALS}
        return self

    def _request(self, signum: int, frame: object) -> None:
        self.signum = signum
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class Objective(Protocol):
    """What one kind of training brings to the shared loop: vidstyle.trainer.style.StyleObjective,
    vidstyle.trainer.upscale.UpscaleObjective."""

    weights: dict[str, float]  # the weight of each loss term in the total
    identity: dict  # its settings a resumed run must share with the checkpoint
    resize_crops: bool  # random resized crops, or crops at the photos' own scale

    def network(self) -> nn.Module:
        """The network to train, initialised from the global generator."""

    def loss_terms(self, net: nn.Module, images: torch.Tensor, autocast: torch.autocast, iteration: int) -> dict[str, torch.Tensor]:
        """The unweighted loss terms of a batch of training crops at an iteration (counted from 1)."""

    def save_samples(self, net: nn.Module, photos: torch.Tensor, path: Path) -> None:
        """A PNG grid of what the network makes of the held-out photos."""

    def card(self) -> dict:
        """The model card's entries of its own."""

    def recipe(self, precision: str) -> str:
        """The model card's recipe: the training in one paragraph."""


def make_objective(config: TrainConfig, loss_net: LossNetwork, device: torch.device) -> Objective:
    if config.factor is not None:
        return UpscaleObjective(config, loss_net)
    if config.paintings is not None:
        return ArbitraryStyleObjective(config, loss_net, device)
    if config.teacher is not None:
        return DistillObjective(config, loss_net, device)
    return StyleObjective(config, loss_net, device)


def train(config: TrainConfig, on_iteration: Callable[[TrainingProgress], bool] | None = None) -> int | None:
    """Train and save the network; returns None, or after saving a checkpoint when stopped early,
    the number of the signal that stopped it, or STOPPED_BY_CALLER when `on_iteration`, called
    after each iteration, returned True."""
    if config.threads:
        torch.set_num_threads(config.threads)
    keep_freed_memory()  # the smaller buffers reused (vidstyle.memory); VGG's largest at 256 px exceed its threshold
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = config.precision or ("bf16" if has_native_bf16(device) else "fp32")
    schedule = config.schedule()
    iterations = schedule[-1][1]

    photos = find_images(config.dataset)
    if config.holdout >= len(photos):
        raise VidstyleError(f"--holdout {config.holdout} leaves none of the {len(photos)} images in {config.dataset} to train on")
    train_paths, held_out = photos[: len(photos) - config.holdout], photos[len(photos) - config.holdout :]
    pool = held_out or train_paths
    # Spread over the pool: neighbours by name are often alike (ImageNet's classes come sorted).
    sample_photos = load_sample_photos(pool[:: max(1, len(pool) // SAMPLE_COUNT)][:SAMPLE_COUNT], SAMPLE_SIZE).to(device)

    loss_net = load_loss_network(config.vgg_weights).to(device)
    objective = make_objective(config, loss_net, device)
    identity = {key: getattr(config, key) for key in RUN_IDENTITY} | objective.identity | {
        "training_images": len(train_paths),
        "vgg_weights": loss_net.description,
        "precision": precision,
    }

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    net = objective.network().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    recent: deque[dict[str, float]] = deque(maxlen=FINAL_LOSS_WINDOW)
    iteration, images_consumed, elapsed_s = 0, 0, 0.0

    run_dir = Path(config.run_dir)
    checkpoint_path = run_dir / "checkpoint.pt"
    log_path = run_dir / "log.jsonl"
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    if config.resume:
        checkpoint = _load_checkpoint(checkpoint_path, identity, schedule, config.lr_at)
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        _set_rng_states(checkpoint["rng"])
        recent.extend(checkpoint["recent_losses"])
        iteration, images_consumed, elapsed_s = checkpoint["iteration"], checkpoint["images_consumed"], checkpoint["elapsed_s"]
    elif checkpoint_path.exists():
        raise VidstyleError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --run-dir")
    _truncate_log(log_path, iteration)
    latest_sample = max((run_dir / "samples").glob("iter_*.png"), default=None)

    batches = _scheduled_batches(schedule, iteration, train_paths, config, objective.resize_crops,
                                 pin_memory=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    # A caller with on_iteration shows progress its own way (a fleet job's record), not in a log a line per iteration.
    progress = tqdm(total=iterations, initial=iteration, unit="it", desc=config.name, disable=on_iteration is not None)
    with open(log_path, "a") as log, StopOnSignal() as stop:
        started = time.monotonic() - elapsed_s
        last_checkpoint = time.monotonic()
        for iteration, images in batches:
            terms = objective.loss_terms(net, images.to(device), autocast, iteration)
            total = sum(objective.weights[name] * value for name, value in terms.items())
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(iteration)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()

            losses = {name: value.item() for name, value in terms.items()} | {"total": total.item()}
            recent.append(losses)
            images_consumed += len(images)
            elapsed_s = time.monotonic() - started
            progress.update()
            progress.set_postfix({name: f"{value:.3g}" for name, value in losses.items()})
            if iteration % config.log_every == 0:
                log.write(json.dumps({"iteration": iteration, **losses, "elapsed_s": round(elapsed_s, 2)}) + "\n")
                log.flush()
            finished = iteration == iterations
            if iteration % config.sample_every == 0 or finished:
                latest_sample = run_dir / "samples" / f"iter_{iteration:06d}.png"
                objective.save_samples(net, sample_photos, latest_sample)
            stop_asked = on_iteration is not None and on_iteration(
                TrainingProgress(iteration, iterations, losses, elapsed_s, latest_sample))
            # The time bound keeps what a killed run loses small whatever an iteration costs on the device.
            checkpoint_due = (config.checkpoint_seconds is not None
                              and time.monotonic() - last_checkpoint >= config.checkpoint_seconds)
            if iteration % config.checkpoint_every == 0 or finished or stop.signum or stop_asked or checkpoint_due:
                _save_checkpoint(checkpoint_path, {
                    "iteration": iteration,
                    "images_consumed": images_consumed,
                    "elapsed_s": elapsed_s,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": _rng_states(),
                    "recent_losses": list(recent),
                    "identity": identity,
                    "schedule": schedule,
                })
                last_checkpoint = time.monotonic()
            if stop.signum or stop_asked:
                progress.close()
                why = signal.Signals(stop.signum).name if stop.signum else "stop asked"
                print(f"{why}: stopped after iteration {iteration}; "
                      f"checkpoint {checkpoint_path}; continue with --resume", file=sys.stderr)
                return stop.signum or STOPPED_BY_CALLER
    progress.close()

    card = objective.card() | {
        "dataset": {"name": Path(config.dataset).resolve().name, "images": len(train_paths), "held_out": len(held_out)},
        "image_size": schedule[-1][0],
        "curriculum": [list(stage) for stage in config.stages()],
        "iterations": iteration,
        "precision": precision,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "final_lr": config.final_lr,
        "final_losses": {name: fmean(losses[name] for losses in recent) for name in recent[-1]} if recent else {},
        "vgg_weights": loss_net.description,
        "wall_time_s": round(elapsed_s, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "seed": config.seed,
        "recipe": objective.recipe(precision),
    }
    save_style(net, config.output, card)
    print(f"saved {config.name}: {config.output}", file=sys.stderr)
    return None


def _scheduled_batches(
    schedule: list[tuple[int, int]], done: int, paths: list[Path], config: TrainConfig, resize: bool, pin_memory: bool
) -> Iterator[tuple[int, torch.Tensor]]:
    """(iteration, batch) from iteration done + 1 to the end of the schedule, each stage at its crop size.

    The stream position is iteration * batch size whatever the stage, so a
    resumed run sees the photos an uninterrupted one would.
    """
    for size, end in schedule:
        if done >= end:
            continue
        batches = training_batches(paths, size, config.batch_size, config.seed, done * config.batch_size,
                                   config.workers, pin_memory, resize)
        yield from zip(range(done + 1, end + 1), batches)
        done = end


def _rng_states() -> dict:
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # Plain lists, so the checkpoint loads with weights_only=True.
        "numpy": [kind, keys.tolist(), position, has_gauss, cached_gaussian],
        "python": random.getstate(),
    }


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(states["python"])


def _save_checkpoint(path: Path, checkpoint: dict) -> None:
    # Write then rename: a crash mid-write leaves the previous checkpoint intact.
    tmp = path.with_name(path.name + ".part")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def _load_checkpoint(
    path: Path, identity: dict, schedule: list[tuple[int, int]], lr_at: Callable[[int], float]
) -> dict:
    if not path.is_file():
        raise VidstyleError(f"nothing to resume: no checkpoint {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways (pickle, zip, struct...) on a file that is no checkpoint
        raise VidstyleError(f"checkpoint {path} is unreadable: {str(exc).splitlines()[0]}") from exc
    trained = IDENTITY_BEFORE | checkpoint["identity"]
    changed = [f"{key} {trained.get(key)!r} (now {value!r})" for key, value in identity.items() if trained.get(key) != value]
    done = checkpoint["iteration"]
    if _sizes_until(checkpoint["schedule"], done) != _sizes_until(schedule, done):
        changed.append(f"crop sizes of iterations 1..{done} (now {_sizes_until(schedule, done)})")
    # The optimizer holds the last lr used: a changed --final-lr may only shape iterations not yet run.
    last_lr = checkpoint["optimizer"]["param_groups"][0]["lr"]
    if not math.isclose(last_lr, lr_at(done), rel_tol=1e-9):
        changed.append(f"learning rate {last_lr:g} at iteration {done} (now {lr_at(done):g})")
    if changed:
        raise VidstyleError(f"checkpoint {path} belongs to a run with other settings: {'; '.join(changed)}")
    return checkpoint


def _sizes_until(schedule: list[tuple[int, int]], iteration: int) -> list[tuple[int, int]]:
    """The schedule cut at an iteration: what a run that far has trained on."""
    cut, start = [], 0
    for size, end in schedule:
        if start < iteration:
            cut.append((size, min(end, iteration)))
        start = end
    return cut


def _truncate_log(path: Path, last_iteration: int) -> None:
    """Keeps the log lines up to the checkpoint; a resumed run writes the rest again."""
    kept = []
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            try:
                if json.loads(line)["iteration"] <= last_iteration:
                    kept.append(line)
            except (ValueError, KeyError):
                pass  # a line cut short by a crash
    path.write_text("".join(kept))
