"""A training run's settings: what `vidstyle train` and `vidstyle train-upscaler` pass
to the training loop (vidstyle.trainer.train) and its objectives (vidstyle.trainer.style, vidstyle.trainer.upscale)."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from vidstyle.trainer.losses import CONTENT_WEIGHT, STABILITY_WEIGHT, STYLE_WEIGHT, TV_WEIGHT


@dataclass(frozen=True)
class Recipe:
    """A training schedule by name (`vidstyle train --recipe`): its crop size stages and final lr."""

    curriculum: tuple[tuple[int, int], ...]
    final_lr: float | None


# "builtin": the schedule that made the built-in styles (docs/training.md), about an hour on one CPU
# thread; "paper": Johnson et al.'s, 40,000 iterations at 256 px (two epochs of COCO at batch 4), lr
# constant, for a GPU. The style image's size follows the first stage (TrainConfig.style_size).
RECIPES = {"builtin": Recipe(((128, 1600), (256, 200)), 1e-5), "paper": Recipe(((256, 40_000),), None)}
DEFAULT_RECIPE = "builtin"
# What `vidstyle distill` runs unless told otherwise, under 45 minutes on one CPU thread of a slow machine
# (docs/compact.md): at 128 px with the teacher (an iteration a third of the cost), then at 256 px,
# where the quality is measured, on the style's own objective alone.
DISTILL_RECIPE = Recipe(((128, 1200), (256, 300)), 1e-5)
# Where a distillation starts unless told otherwise: the built-in compact udnie, a network that
# already paints, so the 45 minutes go to the new style rather than to learning to draw.
DISTILL_START = "udnie"


@dataclass
class TrainConfig:
    dataset: Path
    run_dir: Path
    output: Path
    name: str
    style_image: Path | None = None  # style training; None with a factor or paintings
    paintings: Path | None = None  # any-painting training (vidstyle.trainer.arbitrary): a folder of paintings
    factor: int | None = None  # super-resolution training: the upscale factor of vidstyle.model.UpscalerNet
    vgg_weights: Path | None = None
    image_size: int = 256
    style_size: int | None = None  # long side of the style image; None means 2 * the first crop size
    iterations: int = 40_000  # the paper's: two epochs of COCO at batch 4
    # (crop size, iterations) per stage, e.g. many cheap small crops and then a few at the size
    # the style is used at; None means one stage: image_size for iterations.
    curriculum: tuple[tuple[int, int], ...] | None = None
    precision: str | None = None  # "bf16" or "fp32"; None: bf16 where the device computes it natively
    batch_size: int = 4
    lr: float = 1e-3
    # None keeps lr constant; otherwise the last stage decays it to final_lr along a half cosine.
    final_lr: float | None = None
    # A trained style (name or .pth) to start from instead of random weights: fine-tuning.
    init_from: str | None = None
    # Distillation (vidstyle.trainer.distill): the style (name or .pth) whose TransformerNet a
    # CompactTransformerNet learns from, and the weights of the terms that compare it with the teacher.
    teacher: str | None = None
    teacher_pixel_weight: float = 0.0
    teacher_feature_weight: float = 0.0
    # How many stages, from the first, hold the student to the teacher's output; None: all but the
    # last of two or more (the teacher guides the start, the style's own objective the finish).
    teacher_stages: int | None = None
    content_weight: float = CONTENT_WEIGHT
    style_weight: float = STYLE_WEIGHT
    tv_weight: float = TV_WEIGHT
    stability_weight: float = STABILITY_WEIGHT
    # The stability term's motion, one of vidstyle.trainer.losses.STABILITY_MOTIONS.
    stability_motion: str = "affine"  # nonrigid showed no gain on real footage (docs/training.md)
    # Super-resolution: content_weight weighs the relu2_2 feature term (as for styles), and a
    # per-pixel term keeps colours and PSNR honest.
    pixel_weight: float = 0.0
    # Super-resolution: weight of the term against a grid at the upsampling's period in the detail.
    grid_weight: float = 0.0
    # Super-resolution: weight of the term against a texture of one fine scale in the detail.
    texture_weight: float = 0.0
    # Super-resolution: None blurs every training input by the paper's sigma; a value blurs each
    # by a sigma drawn from 0..max_blur, so the network also restores unblurred bicubic inputs.
    max_blur: float | None = None
    # Residual blocks of UpscalerNet (None: the paper's 4) or of a distillation's CompactTransformerNet
    # (None: 5); with --init-from, None keeps its network's own.
    blocks: int | None = None
    # A distillation's CompactTransformerNet: residual blocks at half the size (None: 0, or --init-from's).
    detail_blocks: int | None = None
    # A distillation's CompactTransformerNet: dense 3x3 convolutions in the blocks at a quarter of the size
    # (False: as --init-from's network, else separable).
    dense_blocks: bool = False
    # Super-resolution: "nearest" or "bilinear" (vidstyle.model.UPSAMPLINGS); None: nearest, or --init-from's.
    upsampling: str | None = None
    # Super-resolution: the phase comb on the detail (vidstyle.model.PhaseComb); None: off, or --init-from's.
    comb: bool | None = None
    holdout: int = 50
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 500
    checkpoint_seconds: float | None = None  # also a checkpoint once this long has passed since the last
    resume: bool = False
    threads: int | None = None
    workers: int = 2
    device: str | None = None

    def stages(self) -> tuple[tuple[int, int], ...]:
        """(crop size, iterations) per stage."""
        return self.curriculum or ((self.image_size, self.iterations),)

    def schedule(self) -> list[tuple[int, int]]:
        """(crop size, last iteration of the stage) per stage, iterations counted from 1."""
        ends = itertools.accumulate(iterations for _, iterations in self.stages())
        return [(size, end) for (size, _), end in zip(self.stages(), ends)]

    def stage_at(self, iteration: int) -> int:
        """The index of the stage an iteration (counted from 1) belongs to."""
        return next((index for index, (_, end) in enumerate(self.schedule()) if iteration <= end), len(self.stages()) - 1)

    def lr_at(self, iteration: int) -> float:
        """The learning rate of an iteration (counted from 1): a function of the
        iteration alone, so a resumed run follows the same schedule."""
        if self.final_lr is None:
            return self.lr
        last_start, last_end = (self.schedule()[-2][1] if len(self.stages()) > 1 else 0), self.schedule()[-1][1]
        if iteration <= last_start:
            return self.lr
        progress = (iteration - 1 - last_start) / max(1, last_end - last_start - 1)
        return self.final_lr + (self.lr - self.final_lr) * (1 + math.cos(math.pi * progress)) / 2

    def describe_schedule(self, crops: str) -> str:
        """The optimiser, data and stages in words, for a model card's recipe."""
        stages = [f"{iterations} iterations at {size} px" for size, iterations in self.stages()]
        lr = f"lr {self.lr}" + ("" if self.final_lr is None else
                                f" (cosine decay to {self.final_lr} over the last {self.stages()[-1][1]} iterations)")
        return (f"Adam {lr}, batch {self.batch_size}, {crops} from {Path(self.dataset).resolve().name} "
                f"({self.holdout} photos held out): {', then '.join(stages)}")
