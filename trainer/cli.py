"""`vidstyle train` (also `python -m vidstyle.trainer`), `vidstyle train-upscaler` and `vidstyle eval`:
train a style or super-resolution network on a folder of photos, and measure it."""
from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Callable

import click
import torch
from click.core import ParameterSource

from vidstyle.trainer.losses import STABILITY_MOTIONS
from vidstyle.trainer.config import DEFAULT_RECIPE, DISTILL_RECIPE, DISTILL_START, RECIPES, Recipe, TrainConfig
from vidstyle.trainer.distill import TEACHER_FEATURE_WEIGHT, TEACHER_PIXEL_WEIGHT
from vidstyle.trainer.train import train as run_training
from vidstyle.trainer.upscale import UPSCALE_GRID_WEIGHT, UPSCALE_TEXTURE_WEIGHT, UPSCALE_PIXEL_WEIGHT, UPSCALE_TV_WEIGHT
from vidstyle.errors import VidstyleError
from vidstyle.formats import parse_size
from vidstyle.model import UPSAMPLINGS, UPSCALE_FACTORS


def parse_curriculum(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[tuple[int, int], ...] | None:
    """"128:2000,256:300" -> ((128, 2000), (256, 300))."""
    if value is None:
        return None
    try:
        stages = tuple(tuple(int(n) for n in stage.split(":")) for stage in value.split(","))
    except ValueError:
        stages = ()
    if not stages or any(len(stage) != 2 or min(stage) < 1 for stage in stages):
        raise click.BadParameter("expected SIZE:ITERATIONS[,SIZE:ITERATIONS...], e.g. 128:2000,256:300")
    return stages


def shared_options(command: Callable) -> Callable:
    """The options of every training command: data, schedule, run directory, checkpoints, device."""
    options = [
        click.option("--dataset", required=True, type=click.Path(path_type=Path), help="Folder of training photos, searched recursively."),
        click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Checkpoint, log.jsonl and samples/.  [default: runs/NAME]"),
        click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
                     help="Trained weights NAME.pth; the model card goes beside it.  [default: RUN_DIR/NAME.pth]"),
        click.option("--vgg-weights", type=click.Path(path_type=Path),
                     help="State dict of vgg16().features with a JSON sidecar of its input convention. "
                          "[default: torchvision's IMAGENET1K_V1, downloaded]"),
        click.option("--image-size", default=TrainConfig.image_size, type=click.IntRange(min=1), show_default=True, help="Training crop size in pixels."),
        click.option("--iterations", default=TrainConfig.iterations, type=click.IntRange(min=1), show_default=True),
        click.option("--curriculum", callback=parse_curriculum,
                     help="Crop size stages SIZE:ITERATIONS,... (e.g. 128:2000,256:300) instead of --image-size and --iterations."),
        click.option("--batch-size", default=TrainConfig.batch_size, type=click.IntRange(min=1), show_default=True),
        click.option("--lr", default=TrainConfig.lr, show_default=True),
        click.option("--final-lr", type=click.FloatRange(min=0),
                     help="Decay the learning rate to this along a half cosine over the last stage.  "
                          "[default: `train`'s --recipe's; otherwise constant --lr]"),
        click.option("--holdout", default=TrainConfig.holdout, type=click.IntRange(min=0), show_default=True,
                     help="Leave the last N photos (sorted by path) out of training; sample grids show the first of them."),
        click.option("--log-every", default=TrainConfig.log_every, type=click.IntRange(min=1), show_default=True),
        click.option("--sample-every", default=TrainConfig.sample_every, type=click.IntRange(min=1), show_default=True),
        click.option("--checkpoint-every", default=TrainConfig.checkpoint_every, type=click.IntRange(min=1), show_default=True),
        click.option("--seed", default=TrainConfig.seed, show_default=True),
        click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its checkpoint."),
        click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch.  [default: torch's choice]"),
        click.option("--workers", default=TrainConfig.workers, type=click.IntRange(min=0), show_default=True, help="DataLoader worker processes decoding photos."),
        click.option("--device", help="torch device.  [default: cuda if available, else cpu]"),
        click.option("--precision", type=click.Choice(["bf16", "fp32"]),
                     help="Run the networks in bfloat16 (autocast; losses stay float32) or float32.  "
                          "[default: bf16 where the device has it natively]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def fleet_options(command: Callable) -> Callable:
    """The options of a training that runs on the fleet instead of here."""
    options = [
        click.option("--submit", is_flag=True,
                     help="Queue the training on the fleet (VIDSTYLE_BROKER_URL, VIDSTYLE_STORAGE) and print its id: the "
                          "painting travels with it, --dataset and --vgg-weights must be under the storage root, and "
                          "the network is published as NAME in the fleet's styles folder."),
        click.option("--queue", help="With --submit: the queue to put it on  [default: vidstyle-training]."),
        click.option("--wait", is_flag=True, help="With --submit: follow it with a progress bar; exit with its outcome."),
        click.option("--json", "as_json", is_flag=True, help="With --submit: print the job record as JSON."),
        click.option("--force", is_flag=True, help="With --submit: replace the published style of this name once trained."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


# Where and how a run runs on this machine: on the fleet, the worker decides.
MACHINE_OPTIONS = ("run_dir", "output", "resume", "threads", "workers", "device")


def given(name: str) -> bool:
    """Whether the running command's option `name` was given, not left at its default."""
    return click.get_current_context().get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def run_training_command(name: str, run_dir: Path | None, output: Path | None, submit: bool = False,
                         queue: str | None = None, wait: bool = False, as_json: bool = False, force: bool = False,
                         **settings: object) -> None:
    """Train with the shared loop, here or with `submit` on the fleet; a bad input is a one-line error,
    a signal the exit status 128 + N."""
    if submit:
        local = [f"--{option.replace('_', '-')}" for option in MACHINE_OPTIONS if given(option)]
        if local:
            raise click.UsageError(f"{', '.join(local)}: a worker decides where and how a training on the fleet runs")
        from vidstyle.workers.cli import submit_training_to_fleet  # Celery and Redis: only here

        recipe = {key: value for key, value in settings.items() if key not in MACHINE_OPTIONS}
        try:
            submit_training_to_fleet(name, recipe, queue=queue, wait=wait, as_json=as_json, force=force)
        except VidstyleError as exc:
            raise click.ClickException(str(exc)) from exc
        return
    if queue or wait or as_json or force:
        raise click.UsageError("--queue, --wait, --json and --force go with --submit")
    run_dir = run_dir or Path("runs") / name
    config = TrainConfig(name=name, run_dir=run_dir, output=output or run_dir / f"{name}.pth", **settings)
    try:
        stopped_by = run_training(config)
    except VidstyleError as exc:
        raise click.ClickException(str(exc)) from exc
    if stopped_by is not None:
        raise SystemExit(128 + stopped_by)  # the shell's convention for "ended by signal N"


def with_recipe(options: dict, recipe: Recipe) -> None:
    """Give a run `recipe`'s schedule, unless --curriculum, --iterations or --image-size give one."""
    if not any(given(option) for option in ("curriculum", "iterations", "image_size")):
        options["curriculum"] = recipe.curriculum
        if options["final_lr"] is None:
            options["final_lr"] = recipe.final_lr


def style_options(command: Callable) -> Callable:
    """The options of both style trainings: a painting's and any painting's."""
    options = [
        click.option("--style-size", type=click.IntRange(min=1), help="Resize the style image's long side to this.  [default: 2 * image size]"),
        click.option("--init-from", metavar="STYLE",
                     help="Start from a trained style's weights (name or .pth) instead of random ones: fine-tune it."),
        click.option("--content-weight", default=TrainConfig.content_weight, show_default=True),
        click.option("--style-weight", default=TrainConfig.style_weight, show_default=True),
        click.option("--tv-weight", default=TrainConfig.tv_weight, show_default=True),
        click.option("--stability-weight", default=TrainConfig.stability_weight, show_default=True,
                     help="Weight of the temporal stability term; 0 turns it off."),
        click.option("--stability-motion", type=click.Choice(STABILITY_MOTIONS), default=TrainConfig.stability_motion,
                     show_default=True,
                     help="The stability term's motion: a camera move over a still scene (affine), or also parts of "
                          "the scene moving on their own, light changes, blur and compression (nonrigid)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@click.argument("style_image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Style name.  [default: STYLE_IMAGE's file name without extension]")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=DEFAULT_RECIPE, show_default=True,
              help="The schedule, unless --curriculum, --iterations or --image-size give one: builtin, the built-in "
                   "styles' (128:1600,256:200, lr decayed to 1e-5), or paper, Johnson et al.'s (256:40000, lr constant).")
@shared_options
@style_options
@fleet_options
def train(style_image: Path, name: str | None, recipe: str, **options: object) -> None:
    """Train a fast style transfer network for STYLE_IMAGE (Johnson et al. 2016).

    Ctrl-C or SIGTERM finishes the current iteration, saves a checkpoint and
    exits; --resume continues exactly where it stopped. With --submit it runs
    on the fleet instead (see `vidstyle status`, `watch`, `cancel`).
    """
    with_recipe(options, RECIPES[recipe])
    run_training_command(name or style_image.stem, style_image=style_image, **options)


@click.command("train-arbitrary")
@click.argument("paintings", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default="arbitrary", show_default=True, help="Network name.")
@shared_options
@style_options
def train_arbitrary(paintings: Path, name: str, **options: object) -> None:
    """Train the any-painting network (Ghiasi et al. 2017) on a folder of PAINTINGS and --dataset's photos.

    Every 8th painting by name is held out of training (the model card lists
    them). Checkpoints, --resume, the log, sample grids (held-out paintings
    by photos) and Ctrl-C work as for `vidstyle train`.
    """
    run_training_command(name, paintings=paintings, **options)


@click.command()
@click.argument("style")
@click.option("--style-image", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The painting STYLE was trained on (checked against its model card's sha256).")
@shared_options
@click.option("--init-from", metavar="STYLE|none", default=DISTILL_START, show_default=True,
              help="The compact network (a style's name or .pth) whose weights the student starts from; none: "
                   "random weights.")
@click.option("--teacher-pixel-weight", default=TEACHER_PIXEL_WEIGHT, show_default=True,
              help="Weight of the mean squared difference from the teacher's output, in pixels.")
@click.option("--teacher-feature-weight", default=TEACHER_FEATURE_WEIGHT, show_default=True,
              help="Weight of the difference from the teacher's output in the loss network's features.")
@click.option("--teacher-stages", type=click.IntRange(min=0),
              help="How many curriculum stages, from the first, include the teacher terms.  [default: all but the "
                   "last of two or more]")
@click.option("--blocks", type=click.IntRange(min=1),
              help="Residual blocks of the student; more than --init-from's network has adds blocks that start as "
                   "the identity.  [default: --init-from's, or 5]")
@click.option("--detail-blocks", type=click.IntRange(min=0),
              help="Residual blocks at half the size, in the decoder that draws the fine strokes (32 channels, about "
                   "7% of the network's arithmetic each); added ones start as the identity.  [default: --init-from's, "
                   "or 0]")
@click.option("--dense-blocks", is_flag=True,
              help="Dense 3x3 convolutions in the residual blocks at a quarter of the size, instead of separable "
                   "ones: nine times their weights, for a style the separable ones cannot draw, about 15% slower "
                   "end to end; --init-from's separable blocks are converted exactly.  [default: as "
                   "--init-from's network]")
@click.option("--stability-weight", type=click.FloatRange(min=0),
              help="Weight of the temporal stability term.  [default: the teacher's, from its model card]")
def distill(style: str, style_image: Path, run_dir: Path | None, init_from: str, stability_weight: float | None,
            **options: object) -> None:
    """Distil STYLE (a name or .pth) into the compact network, CompactTransformerNet: the same look at
    about a ninth of the time per frame on a CPU, in under 45 minutes on one CPU thread.

    The loss is the teacher's output (pixels and VGG features) plus the style's own objective, with
    the weights of its model card; the last of two or more stages trains on the objective alone.
    Install the result as compact/NAME.pth (+ .json) beside the style's NAME.pth. Checkpoints,
    --resume, the log, sample grids (photo | teacher | student) and Ctrl-C work as for `vidstyle
    train`. Without --curriculum, --iterations or --image-size it runs the built-in compact
    networks' schedule (128:1200,256:300, lr decayed to 1e-5).
    """
    from vidstyle.trainer.distill import teacher_settings, teacher_style

    with_recipe(options, DISTILL_RECIPE)
    options["init_from"] = None if init_from == "none" else init_from
    try:
        teacher = teacher_style(style)
        settings = teacher_settings(teacher, style_image)
    except VidstyleError as exc:
        raise click.ClickException(str(exc)) from exc
    if stability_weight is not None:  # a steadier student than its teacher, at some cost to the look
        settings["stability_weight"] = stability_weight
    run_training_command(teacher.name, run_dir or Path("runs") / f"{teacher.name}.compact", style_image=style_image,
                         teacher=style, **settings, **options)


@click.command("train-upscaler")
@click.option("--factor", required=True, type=click.Choice([str(f) for f in UPSCALE_FACTORS]), help="Upscale factor.")
@click.option("--name", help="Upscaler name.  [default: xFACTOR]")
@shared_options
@click.option("--feature-weight", "content_weight", default=1.0, show_default=True,
              help="Weight of the relu2_2 feature reconstruction term.")
@click.option("--pixel-weight", default=UPSCALE_PIXEL_WEIGHT, show_default=True,
              help="Weight of the per-pixel squared error term.")
@click.option("--tv-weight", default=UPSCALE_TV_WEIGHT, show_default=True)
@click.option("--grid-weight", default=UPSCALE_GRID_WEIGHT, show_default=True,
              help="Weight of the term against a grid at the upsampling's period in the detail the network adds.")
@click.option("--texture-weight", default=UPSCALE_TEXTURE_WEIGHT, show_default=True,
              help="Weight of the term against a texture of one fine scale in the detail the network adds "
                   "(a peak in its radial power spectrum over the true detail's).")
@click.option("--max-blur", type=click.FloatRange(min=0), default=None,
              help="Blur each training input by a Gaussian of a random sigma in 0..MAX_BLUR px before downsampling, "
                   "so the network restores plain bicubic downscales too.  [default: the paper's sigma of 1 px for all]")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False),
              help="Start from a trained upscaler's weights (.pth) of the same factor instead of random ones: fine-tune it.")
@click.option("--blocks", type=click.IntRange(min=1),
              help="Residual blocks at the low resolution. With --init-from, more than it has adds blocks that start "
                   "as the identity.  [default: 4, or --init-from's]")
@click.option("--upsampling", type=click.Choice(UPSAMPLINGS),
              help="How features are enlarged between octaves; bilinear has no block grid at the factor's period, "
                   "and --init-from a network of the other kind fine-tunes it to this one.  [default: nearest, or --init-from's]")
@click.option("--comb/--no-comb", default=None,
              help="Take what repeats with the factor's period out of the detail (the phase comb: no block grid, "
                   "whatever the upsampling); --init-from a network without it fine-tunes it to it.  [default: off, or --init-from's]")
@fleet_options
def train_upscaler(factor: str, name: str | None, **options: object) -> None:
    """Train a super-resolution network (Johnson et al. 2016, section 4.2) on a folder of photos.

    Inputs are the training crops blurred and downsampled by FACTOR; the
    network learns to restore them. Checkpoints, --resume, the log, sample
    grids (bicubic | network | original) and Ctrl-C work as for `vidstyle train`.
    """
    run_training_command(name or f"x{factor}", factor=int(factor), **options)


@click.group("eval")
def evaluate() -> None:
    """Measure a style (quality against direct optimisation, flicker on video) or an upscaler."""


@evaluate.command()
@click.option("--style", "-s", "style_name", help="Style name or .pth weights file.  [default: the any-painting network]")
@click.option("--images", required=True, type=click.Path(path_type=Path), help="Folder of photos the style was not trained on.")
@click.option("--style-image", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The style image it was trained from (checked against the model card's sha256); without "
                   "--style, any painting, for the any-painting network.")
@click.option("--vgg-weights", type=click.Path(path_type=Path), help="The loss network weights it was trained with.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=16), help="Photos are centre crops of SIZE x SIZE.")
@click.option("--held-out", type=click.IntRange(min=1),
              help="Only the last N photos by path: those `vidstyle train --holdout N` left out of the same folder.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N of the photos (by path).")
@click.option("--max-iterations", default=300, show_default=True, type=click.IntRange(min=1),
              help="Give up on L-BFGS after this many iterations.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch.")
def quality(style_name: str | None, images: Path, style_image: Path, vgg_weights: Path | None, size: int,
            held_out: int | None, limit: int | None, max_iterations: int, threads: int | None) -> None:
    """How many L-BFGS iterations of Gatys et al.'s optimisation the network is worth.

    For each photo: the training objective (content + style + tv, the model
    card's weights) of the network's output, and the L-BFGS iterations that
    direct optimisation of the same objective needs to reach it, from white
    noise and from the photo itself (Johnson et al. 2016, Figure 5).
    """
    from vidstyle.trainer.evaluate import evaluate_quality, median_iterations
    from vidstyle.styles import find_treatment

    if threads:
        torch.set_num_threads(threads)
    style = find_treatment(style_name, painting=None if style_name else style_image).style
    results = evaluate_quality(style, style_image, images, vgg_weights, size=size, limit=limit,
                               max_iterations=max_iterations, held_out=held_out)

    def shown(count: float | None) -> str:
        return f">{max_iterations}" if count is None or count > max_iterations else f"{count:g}"

    click.echo(f"{'image':<32} {'objective':>12} {'style loss':>12} {'L-BFGS from noise':>18} {'from content':>13}")
    for r in results:
        click.echo(f"{r.image:<32} {r.objective:>12.4g} {r.style_loss:>12.4g} {shown(r.from_noise):>18} {shown(r.from_content):>13}")
    noise = median_iterations([r.from_noise for r in results], max_iterations)
    content = median_iterations([r.from_content for r in results], max_iterations)
    click.echo(f"{'median':<32} {median(r.objective for r in results):>12.4g} {median(r.style_loss for r in results):>12.4g} "
               f"{shown(noise):>18} {shown(content):>13}")


@evaluate.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--style", "-s", "style_name", help="Style name or .pth weights file.")
@click.option("--upscale", metavar="FACTOR|FILE.pth",
              help="Instead of --style: an upscaler (as `vidstyle upscale --factor`) on the clip downscaled by its "
                   "factor, against bicubic upscaling.")
@click.option("--frames", type=click.IntRange(min=2), help="Only the first N frames.")
@click.option("--size", help="Scale the frames to WIDTHxHEIGHT first (e.g. 640x360).")
@click.option("--temporal-strength", type=click.FloatRange(0, 1), help="The temporal stage's strength [default: submit's].")
@click.option("--strip", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG of frames from the start, middle and end at 100%: input, per frame, temporal.")
@click.option("--style-image", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --vgg-weights: also compare the outputs' content and style losses.")
@click.option("--vgg-weights", type=click.Path(path_type=Path), help="The loss network weights the style was trained with.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--device", help="cpu, cuda or cuda:N [default: cuda when available].")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch.")
def flicker(video: Path, style_name: str | None, upscale: str | None, frames: int | None, size: str | None,
            temporal_strength: float | None, strip: Path | None, style_image: Path | None, vgg_weights: Path | None,
            batch_size: int, device: str | None, threads: int | None) -> None:
    """The warping error of VIDEO stylized, relative to the input's own, with and without the temporal stage.

    Stylized frame t+1 is warped to frame t along the input's optical flow
    (Farneback's, then DIS's at full resolution; neither is the temporal stage's
    own), occluded pixels and motion boundaries are left out, and the mean
    squared difference is divided by the same error of the input frames. Each
    figure comes with the measure's floor: the same ratio for a perfectly
    consistent output (each input frame and its per-frame output carried to the
    next frame by one exact motion fitted to the input's), which on smooth
    footage is far above 1; flicker is then stated as a multiple of that floor.

    With --upscale instead of --style: the clip (at --size) is downscaled by
    the upscaler's factor (bicubic, antialiased), upscaled by the network and by
    bicubic, the network frame by frame and with the temporal stage, each
    stated as a multiple of bicubic's, beside the full-size clip's own (what a
    perfect upscaler would score).
    """
    if (style_name is None) == (upscale is None):
        raise VidstyleError("give either --style or --upscale")
    if threads:
        torch.set_num_threads(threads)
    from vidstyle.temporal import DEFAULT_STRENGTH

    strength = DEFAULT_STRENGTH if temporal_strength is None else temporal_strength
    if upscale is not None:
        style_only = [name for name, value in (("--style-image", style_image), ("--vgg-weights", vgg_weights)) if value]
        if style_only:
            raise VidstyleError(f"{', '.join(style_only)}: only with --style")
        return upscale_flicker(video, upscale, frames, size, batch_size, device, strength, strip)
    from vidstyle.trainer.evaluate import PerceptualObjective, evaluate_flicker
    from vidstyle.trainer.vgg import load_loss_network
    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.styles import find_style

    style = find_style(style_name)
    objective = None
    if style_image is not None:
        objective = PerceptualObjective(style.card, style_image, load_loss_network(vgg_weights))
    report = evaluate_flicker(video, Stylizer(style.load_network(), resolve_device(device)), batch_size=batch_size,
                              limit=frames, size=parse_size(size) if size else None, objective=objective, strip=strip,
                              temporal_strength=strength)
    for flow in report.per_frame:
        for name, result in (("per frame", report.per_frame[flow]), ("temporal", report.temporal[flow])):
            click.echo(f"{style.name} {name}, {flow}: {result.frames} frames, flicker ratio {result.ratio:.3g} "
                       f"(floor {result.floor:.3g}): {result.over_floor:.2f} x the floor")
    if objective is not None:
        click.echo(f"temporal against per frame: content loss x{report.content_ratio:.3f}, style loss "
                   f"x{report.style_ratio:.3f}; last third x{report.last_third_content_ratio:.3f}, "
                   f"x{report.last_third_style_ratio:.3f}")
    if strip is not None:
        click.echo(str(strip))


def upscale_flicker(video: Path, upscale: str, frames: int | None, size: str | None, batch_size: int,
                    device: str | None, temporal_strength: float, strip: Path | None) -> None:
    """`eval flicker --upscale`: the network's flicker (frame by frame and with the temporal stage),
    and the full-size clip's own, as multiples of bicubic's, on the clip made small."""
    from vidstyle.trainer.evaluate import evaluate_upscale_flicker
    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.styles import find_upscaler

    upscaler = find_upscaler(upscale)
    report = evaluate_upscale_flicker(video, Stylizer(upscaler.load_network(), resolve_device(device)), upscaler.factor,
                                      temporal_strength=temporal_strength, batch_size=batch_size, limit=frames,
                                      size=parse_size(size) if size else None, strip=strip)
    for flow, result in report.items():
        click.echo(f"{upscaler.name} upscale, {flow}: {result.frames} frames, flicker x bicubic's: per frame "
                   f"{result.over_bicubic:.2f}, temporal {result.temporal_over_bicubic:.2f} (the full-size clip's own: "
                   f"{result.original_over_bicubic:.2f})")
    if strip is not None:
        click.echo(str(strip))


@evaluate.command()
@click.option("--factor", required=True, type=click.Choice([str(f) for f in UPSCALE_FACTORS]), help="Upscale factor.")
@click.option("--weights", type=click.Path(path_type=Path),
              help="UpscalerNet weights (.pth, or a training checkpoint.pt).  [default: the built-in xFACTOR]")
@click.option("--set", "sets", required=True, multiple=True, type=click.Path(path_type=Path),
              help="A folder of NAME_HR.png test images, with the published NAME_LR.png inputs where there are; repeatable.")
@click.option("--vgg-weights", type=click.Path(path_type=Path), help="The loss network weights for the feature distance.")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG of the first set's images: bicubic | network | original, and zoomed crops of each.")
@click.option("--record", is_flag=True, help="Add the figures to the model card beside --weights, as its evaluation.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch.")
def upscale(factor: str, weights: Path | None, sets: tuple[Path, ...], vgg_weights: Path | None, sheet: Path | None,
            record: bool, threads: int | None) -> None:
    """PSNR and SSIM (luma) and VGG relu2_2 feature distance of an upscaler and of bicubic upscaling.

    Each --set is measured with its published low-resolution inputs (where
    their size fits FACTOR) and with the blur and bicubic downsampling the
    network was trained on; see docs/super-resolution.md for the protocol.
    """
    import shlex
    import sys

    from vidstyle.trainer.upscale import load_upscaler
    from vidstyle.trainer.losses import TEXTURE_BANDS, TEXTURE_EXCESS
    from vidstyle.trainer.upscale_eval import GRID_THRESHOLD, evaluate_upscaler, read_test_set, record_in_card
    from vidstyle.styles import BUILTIN_UPSCALERS_DIR
    from vidstyle.trainer.vgg import load_loss_network

    if threads:
        torch.set_num_threads(threads)
    weights = weights or BUILTIN_UPSCALERS_DIR / f"x{factor}.pth"
    net = load_upscaler(weights, int(factor))
    test_sets = {folder.name: read_test_set(folder, int(factor)) for folder in sets}
    results = evaluate_upscaler(net, test_sets, load_loss_network(vgg_weights), sheet)
    bicubic = {(r.set, r.inputs): r.feature for r in results if r.method == "bicubic"}
    click.echo(f"{'set':<10} {'inputs':<13} {'images':>6} {'method':<8} {'PSNR':>7} {'SSIM':>7} {'feature':>10} "
               f"{'/bicubic':>9} {'grid':>6} {'texture':>7}")
    for r in results:
        click.echo(f"{r.set:<10} {r.inputs:<13} {r.images:>6} {r.method:<8} {r.psnr:>7.2f} {r.ssim:>7.4f} "
                   f"{r.feature:>10.4g} {r.feature / bicubic[r.set, r.inputs]:>9.3f} "
                   f"{'-' if r.grid is None else format(r.grid, '.2f'):>6} "
                   f"{'-' if r.texture is None else format(r.texture, '.3f'):>7}")
    gridded = [f"{r.set} {r.inputs} {r.grid:.2f}" for r in results if r.grid is not None and r.grid > GRID_THRESHOLD]
    click.echo(f"grid: the network's detail at the {factor}-pixel period's frequencies, as a multiple of the power "
               f"around them (about 1 without a grid); over {GRID_THRESHOLD:g}, a grid: "
               f"{', '.join(gridded) if gridded else 'none'}")
    click.echo(f"texture: the detail's power in radial bands of {TEXTURE_BANDS} over the true detail's, each "
               f"band's ratio beyond {TEXTURE_EXCESS:g} times the median band's, averaged (0 without a texture of "
               f"one fine scale; train-upscaler's --texture-weight term)")
    if sheet is not None:
        click.echo(str(sheet))
    if record:
        command = shlex.join(["vidstyle", *sys.argv[1:]])
        click.echo(str(record_in_card(weights, results, command)))
