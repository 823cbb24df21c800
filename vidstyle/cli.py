"""The `vidstyle` command line."""
from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from vidstyle import formats
from vidstyle.formats import parse_size
from vidstyle.settings import setting
from vidstyle.errors import VidstyleError
from vidstyle.sample import make_camera_video, make_sample_video

if TYPE_CHECKING:  # torch loads only with the commands that run a network
    from vidstyle.inference import Controls

# The command line is where the core meets the trainer and the fleet, and the one
# place in vidstyle/ that names them: as "module:attribute" strings, loaded only
# when a command runs (or --help lists it). So the core never imports them, torch
# and torchvision (seconds to import) load only with the commands that need them,
# and the fleet commands that only talk to Redis answer at once.
LAZY_COMMANDS = {
    "train": "vidstyle.trainer.cli:train",
    "train-arbitrary": "vidstyle.trainer.cli:train_arbitrary",
    "train-upscaler": "vidstyle.trainer.cli:train_upscaler",
    "distill": "vidstyle.trainer.cli:distill",
    "eval": "vidstyle.trainer.cli:evaluate",
    "status": "vidstyle.workers.cli:status",
    "watch": "vidstyle.workers.cli:watch",
    "list": "vidstyle.workers.cli:list_jobs",
    "cancel": "vidstyle.workers.cli:cancel",
    "workers": "vidstyle.workers.cli:workers",
    "worker": "vidstyle.workers.cli:worker",
}


# What `submit` hands over to: a still optimised after a painting, a job for the fleet.
OPTIMISE_STILL = "vidstyle.trainer.gatys:optimise_still"
SUBMIT_TO_FLEET = "vidstyle.workers.cli:submit_to_fleet"


def load(target: str) -> Callable:
    """The attribute a "module:attribute" string names, its module imported now."""
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in LAZY_COMMANDS:
            return super().get_command(ctx, name)
        return load(LAZY_COMMANDS[name])


@click.group(cls=LazyGroup)
@click.version_option(package_name="vidstyle")
def cli() -> None:
    """Fast feed-forward style transfer for videos and images."""


def run_options(command: Callable) -> Callable:
    """The options `submit` and `upscale` share: where the output goes, how it is encoded, where it runs."""
    options = [
        click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path)),
        click.option("--output", "-o", type=click.Path(path_type=Path),
                     help="Output file [default: INPUT.STYLE.EXT (INPUT.xN.EXT upscaled) beside the input]."),
        click.option("--batch-size", type=click.IntRange(1),
                     help="Frames per network batch [default: from frame size and device memory]."),
        click.option("--device", help="cpu, cuda or cuda:N [default: cuda when available]."),
        click.option("--codec", help="Video encoder: libx264, libx265, libvpx-vp9, libsvtav1, prores_ks, gif, h264_nvenc... "
                                     "[default: from the output's container: libx264, libvpx-vp9 for WebM, gif for GIF]."),
        click.option("--crf", default=18, show_default=True, type=click.IntRange(0, 51),
                     help="Quality, lower is better (x264, x265, VP9, AV1, NVENC; ProRes and GIF have none)."),
        click.option("--preset", default="medium", show_default=True,
                     help="x264's speed preset names (ultrafast..placebo), mapped onto VP9's and AV1's speed levels."),
        click.option("--compile/--no-compile", "compile_network", default=None,
                     help="torch.compile the network: faster per frame, slower to start [default: when the video is long "
                          "enough to repay it, never for a still; VIDSTYLE_COMPILE=1/0 forces either]."),
        click.option("--precision", type=click.Choice(["auto", "fp32"]),
                     help="auto: float16 on CUDA, bfloat16 on CPUs with native bf16 (faster, ~53 dB from fp32); "
                          "fp32: float32 throughout [default: VIDSTYLE_PRECISION, else auto]."),
        click.option("--fps", help="The frame rate of an image-sequence input (shot/frame_%04d.png): 24, 25, 23.976, "
                                   "24000/1001... [default: 24]."),
        click.option("--force", "-f", is_flag=True, help="Overwrite an existing output."),
        click.option("--queue", help="With a broker: the queue to put the job on [default: vidstyle, the workers' default]."),
        click.option("--segment-seconds",
                     help="With a broker: split a long video over several workers in segments of about this many "
                          "seconds, cut at keyframes; 'off' never splits [default: auto, from its length and the live workers]."),
        click.option("--wait", is_flag=True, help="With a broker: follow the job with a progress bar; exit with its outcome."),
        click.option("--json", "as_json", is_flag=True, help="With a broker: print the job record as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def temporal_options(command: Callable) -> Callable:
    """The temporal stage's options, which `submit` and `upscale` share."""
    command = click.option("--temporal-strength", type=click.FloatRange(0, 1),
                           help="How much of each frame comes from the previous one where the motion is reliable, "
                                "0..1 [default: 0.9].")(command)
    return click.option("--temporal/--no-temporal", default=True, show_default=True,
                        help="Videos: carry the network's features from frame to frame along the optical flow, so "
                             "strokes and invented detail do not flicker.")(command)


def temporal_blend(temporal: bool, strength: float | None) -> float:
    """The temporal stage's strength the options ask for (0: off)."""
    from vidstyle.temporal import DEFAULT_STRENGTH

    return (DEFAULT_STRENGTH if strength is None else strength) if temporal else 0.0


# vidstyle.model.NETWORKS, spelled out here: importing the model would load torch for every command.
NETWORK_OPTION = click.option(
    "--network", type=click.Choice(["auto", "full", "compact"]), default="auto", show_default=True,
    help="A style's network: compact (distilled, several times faster on a CPU), full, or auto: the compact one "
         "where the style has one that keeps 90% of the full one's measured quality.")


@cli.command()
@click.option("--style", "-s", help="Style name (see `vidstyle styles`) or path to a .pth weights file.")
@click.option("--style-image", type=click.Path(path_type=Path),
              help="Instead of --style: any painting (an image file), in one pass by the any-painting network, no training.")
@click.option("--strength", default=1.0, show_default=True, type=click.FloatRange(0, 1),
              help="How much of the style: 0 is the input, 1 the full style.")
@click.option("--preserve-colors", is_flag=True, help="Keep the input's colours: the style's luminance, the input's chroma.")
@click.option("--upscale", metavar="FACTOR|FILE.pth",
              help="Then upscale the stylized frames by this factor (an installed upscaler, see `vidstyle styles`), "
                   "in the same pass.")
@click.option("--optimise", is_flag=True,
              help="With --style-image, for a still: optimise the image itself after the painting (Gatys et al.; "
                   "minutes, the best quality) instead of the network's one pass.")
@click.option("--vgg-weights", type=click.Path(path_type=Path),
              help="With --optimise: the loss network's weights, as for `vidstyle train` "
                   "[default: VIDSTYLE_VGG_WEIGHTS, else torchvision's published weights].")
@click.option("--iterations", type=click.IntRange(1), help="With --optimise: L-BFGS iterations [default: 100].")
@click.option("--size", type=click.IntRange(16),
              help="With --optimise: the output's long side in pixels, the photo resized to it [default: 512].")
@click.option("--init", type=click.Choice(["photo", "noise"]),
              help="With --optimise: start from the photo or from white noise [default: photo].")
@NETWORK_OPTION
@temporal_options
@run_options
def submit(style: str | None, style_image: Path | None, strength: float, preserve_colors: bool, upscale: str | None,
           temporal: bool, temporal_strength: float | None, optimise: bool, vgg_weights: Path | None,
           iterations: int | None, size: int | None, init: str | None, network: str, **options) -> None:
    """Stylize a video, an image sequence or a still with a trained style, or after any painting.

    With a broker configured (VIDSTYLE_BROKER_URL) the job goes to the worker
    fleet instead: its id is printed at once (see `vidstyle watch`); an
    --optimise run always runs here."""
    from vidstyle.inference import Controls

    if (style is None) == (style_image is None):
        raise VidstyleError("name a trained style (--style) or any painting (--style-image)")
    controls = Controls(strength=strength, preserve_colors=preserve_colors)
    optimisation = {"size": size, "iterations": iterations, "init": init, "vgg_weights": vgg_weights}
    if optimise:
        if style_image is None or upscale:
            raise VidstyleError("--optimise optimises a still after --style-image; upscale its result with `vidstyle upscale`")
        optimise_still = load(OPTIMISE_STILL)
        input_path = options["input_path"]
        output = options["output"] or input_path.with_name(f"{input_path.stem}.{style_image.stem}{input_path.suffix}")
        given = {name: value for name, value in optimisation.items() if value is not None}
        click.echo(str(optimise_still(input_path, output, style_image, controls=controls, force=options["force"], **given)))
        return
    if any(value is not None for value in optimisation.values()):
        raise VidstyleError("--vgg-weights, --iterations, --size and --init go with --optimise")
    run(style=style, painting=style_image, upscale=upscale, temporal_strength=temporal_blend(temporal, temporal_strength),
        controls=controls, network=network, **options)


@cli.command()
@click.option("--factor", default="4", show_default=True, metavar="FACTOR|FILE.pth",
              help="Upscale factor (an installed upscaler, see `vidstyle styles`) or an upscaler's weights file.")
@temporal_options
@run_options
def upscale(factor: str, temporal: bool, temporal_strength: float | None, **options) -> None:
    """Upscale a video (or a still image) with a super-resolution network: FACTOR times the width and height.

    With a broker configured (VIDSTYLE_BROKER_URL) the job goes to the worker fleet instead."""
    run(style=None, painting=None, upscale=factor, temporal_strength=temporal_blend(temporal, temporal_strength), **options)


def run(input_path: Path, style: str | None, painting: Path | None, upscale: str | None, temporal_strength: float,
        output: Path | None, batch_size: int | None, device: str | None, codec: str | None, crf: int, preset: str,
        compile_network: bool | None, precision: str | None, fps: str | None, force: bool, queue: str | None,
        segment_seconds: str | None, wait: bool, as_json: bool, controls: Controls | None = None,
        network: str | None = None) -> None:
    """`submit` and `upscale`: here through the pipeline, or with a broker on the fleet."""
    from vidstyle.inference import Controls

    controls = controls or Controls()

    if fps and not formats.is_sequence(input_path):
        raise VidstyleError("--fps is the rate of an image-sequence input (shot/frame_%04d.png); a video keeps its own")
    sequence_fps = formats.parse_fps(fps)
    if setting("VIDSTYLE_BROKER_URL"):
        if device or compile_network is not None or precision:
            raise VidstyleError("with a broker, the device, compilation and precision are worker settings "
                                "(vidstyle worker --device --precision, VIDSTYLE_COMPILE)")
        load(SUBMIT_TO_FLEET)(input_path, style, painting=painting, upscale=upscale, output=output,
                              batch_size=batch_size, codec=codec, crf=crf, preset=preset, force=force, queue=queue, segment_seconds=segment_seconds,
                              temporal_strength=temporal_strength, sequence_fps=sequence_fps, controls=controls,
                              wait=wait, as_json=as_json, network=network)
        return
    if queue or as_json or segment_seconds:
        raise VidstyleError("--queue, --segment-seconds and --json need a broker (VIDSTYLE_BROKER_URL); "
                            "without one, it runs on this machine")
    # torch: imported by the commands that run networks, not by every command.
    from vidstyle.inference import Stylizer, resolve_device
    from vidstyle.media import EncodeOptions, default_output_path, is_image
    from vidstyle.pipeline import stylize_file
    from vidstyle.styles import find_treatment

    chosen = find_treatment(style, upscale, painting, network)
    output = output or default_output_path(input_path, chosen.name)
    stylizer = Stylizer(chosen.load_network(), resolve_device(device), compile=compile_network, precision=precision)
    # The bar appears with the first stylized batch, so a run that fails at once shows only its error.
    bar = tqdm(total=0, unit="frame", desc=f"{input_path.name} -> {chosen.name}", delay=0.5, disable=is_image(input_path))
    def on_progress(done: int, total: int) -> None:
        bar.total = total or None  # unknown: frames and fps, no false total
        bar.update(done - bar.n)

    with bar:
        result = stylize_file(input_path, output, stylizer, batch_size=batch_size,
                              encode=EncodeOptions(codec=codec, crf=crf, preset=preset),
                              force=force, on_progress=on_progress, temporal_strength=temporal_strength,
                              sequence_fps=sequence_fps, controls=controls)
    click.echo(str(result))


@cli.command()
def styles() -> None:
    """List the available styles and upscalers."""
    from vidstyle.styles import available_styles, available_upscalers

    found = available_styles()
    if not found:
        click.echo("no styles installed (add a folder of NAME.pth + NAME.json to VIDSTYLE_STYLES_PATH)")
    for name, style in sorted(found.items()):
        runs = style.with_network("auto").weights_path
        for label, network in ((name, style), ("  compact", style.compact())):
            if network is not None:
                default = "  (runs by default)" if network.weights_path == runs else ""
                click.echo(f"{label:<16} {_style_figures(network.card) or '(no model card)'}{default}  {network.weights_path}")
    for factor, upscaler in sorted(available_upscalers().items()):
        # The measured quality (`vidstyle eval upscale --record` writes it), whatever its layout.
        figures = _figures(upscaler.card.get("evaluation", {}))
        click.echo(f"{upscaler.name + ' upscaler':<16} {'' if figures else '(not evaluated)  '}{upscaler.weights_path}")
        for line in figures:
            click.echo(f"    {line}")


def _style_figures(card: dict) -> str:
    """A style's line: its painting and training, and the measured quality and flicker
    (benchmarks/style_quality.py --record) that help pick a style."""
    parts = [f"{k} {card[k]}" for k in ("style_image", "image_size", "iterations") if k in card]
    evaluation = card.get("evaluation", {})
    parts += [f"{label} {evaluation[k]:g}" for k, label in (
        ("median_lbfgs_iterations_from_noise", "L-BFGS equivalent"), ("mean_flicker_ratio", "flicker")) if k in evaluation]
    return ", ".join(parts)


def _figures(evaluation: dict) -> list[str]:
    """The numbers of a model card's evaluation: its own ("key value"), and one line per record of
    a list of them (a test set, its inputs, a method...): the record's words, then its numbers."""
    def numbers(record: dict) -> str:
        return ", ".join(f"{key} {value:.4g}" for key, value in record.items() if isinstance(value, float))

    lines = [numbers(evaluation)] if numbers(evaluation) else []
    for value in evaluation.values():
        for record in value if isinstance(value, list) else []:
            if isinstance(record, dict):
                words = " ".join(v for v in record.values() if isinstance(v, str))
                lines.append(f"{words}: {numbers(record)}")
    return lines


@cli.command()
@click.argument("input_path", metavar="VIDEO_OR_IMAGE", type=click.Path(path_type=Path))
@click.option("--styles", help="Comma-separated style names or .pth files [default: every installed style].")
@click.option("--style-image", "paintings", multiple=True, type=click.Path(path_type=Path),
              help="Any painting (repeatable): a row each, by the any-painting network.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="PNG to write (replaced if it exists) [default: INPUT.preview.png].")
@click.option("--frames", default=4, show_default=True, type=click.IntRange(1, 16), help="Frames spread over the video.")
@click.option("--height", default=180, show_default=True, type=click.IntRange(16), help="Thumbnail height in pixels.")
@click.option("--device", help="cpu, cuda or cuda:N [default: cuda when available].")
@click.option("--strength", "strengths", default="1", show_default=True,
              help="Comma-separated strengths (0..1), a row each: 0.25,0.5,1.")
@click.option("--preserve-colors", is_flag=True, help="Under each row, the same with the input's colours kept.")
@NETWORK_OPTION
def preview(input_path: Path, styles: str | None, paintings: tuple[Path, ...], output: Path | None, frames: int,
            height: int, device: str | None, strengths: str, preserve_colors: bool, network: str) -> None:
    """Write a contact sheet: a few frames of the input by every style, to pick one by looking."""
    from vidstyle.preview import write_preview
    from vidstyle.styles import available_styles, find_style, find_treatment

    chosen = [find_style(name.strip(), network) for name in styles.split(",")] if styles else \
        [] if paintings else [style.with_network(network) for style in available_styles().values()]
    chosen += [find_treatment(painting=painting).style for painting in paintings]
    if not chosen:
        raise VidstyleError("no styles installed to preview")
    output = output or input_path.with_name(f"{input_path.stem}.preview.png")
    click.echo(str(write_preview(input_path, output, chosen, frames=frames, thumb_height=height, device=device,
                                 strengths=parse_strengths(strengths), preserve_colors=preserve_colors)))


@cli.command()
@click.argument("style", required=False)
@click.option("--style-image", type=click.Path(path_type=Path),
              help="Instead of STYLE: any painting, its style code baked into the exported network.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="The .onnx file [default: STYLE.onnx here].")
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing output.")
@NETWORK_OPTION
def export(style: str | None, style_image: Path | None, output: Path | None, force: bool, network: str) -> None:
    """Export a style (name or .pth), or any painting's, to ONNX: RGB float 0..255 NCHW in and out, any frame size."""
    from vidstyle.export import export_style
    from vidstyle.styles import find_treatment

    if (style is None) == (style_image is None):
        raise VidstyleError("name a trained style (STYLE) or any painting (--style-image)")
    chosen = find_treatment(style, painting=style_image, network=network)
    click.echo(str(export_style(chosen.load_network(), output or Path(f"{chosen.name}.onnx"), force=force)))


def parse_strengths(text: str) -> tuple[float, ...]:
    """'0.25,0.5,1' -> (0.25, 0.5, 1.0), each within 0..1."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 <= value <= 1 for value in values):
        raise VidstyleError(f"--strength takes numbers within 0..1, comma-separated (0.25,0.5,1), not '{text}'")
    return values


@cli.command()
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--size", default="640x360", show_default=True, help="WIDTHxHEIGHT.")
@click.option("--frames", default=72, show_default=True, type=click.IntRange(1))
@click.option("--fps", default=24, show_default=True, type=click.IntRange(1))
@click.option("--photo", type=click.Path(path_type=Path),
              help="Instead: a silent clip of a handheld camera moving over this photo (75% of its size; --size is ignored).")
def sample(output: Path, size: str, frames: int, fps: int, photo: Path | None) -> None:
    """Write a synthetic sample clip (moving shapes and a 440 Hz tone) to try vidstyle on."""
    if photo:
        click.echo(str(make_camera_video(photo, output, frames=frames, fps=fps)))
        return
    width, height = parse_size(size)
    click.echo(str(make_sample_video(output, width=width, height=height, frames=frames, fps=fps)))


@cli.command()
def config() -> None:
    """Print the effective settings, each with where it came from (a flag, the environment, the
    config file or its default) and who reads it; passwords in URLs are masked."""
    from vidstyle import settings

    path = settings.config_file()
    click.echo(f"# config file: {path}" + ("" if path.is_file() else " (none)"))
    for declared in settings.SETTINGS:
        value, source = settings.lookup(declared.name)
        shown = "" if value is None else (masked_url(value) if declared.kind == "url" else value)
        click.echo(f"{declared.name}={shown}  # {source if value is not None else 'unset'}; read by {declared.read_by}")
    for key in settings.unknown_file_keys():
        logging.getLogger("vidstyle").warning(f"{path}: {key!r} is not a setting, and does nothing")


def masked_url(url: str) -> str:
    """redis://user:secret@host/0 -> redis://user:***@host/0."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def debugging() -> bool:
    """VIDSTYLE_DEBUG is on (and the settings can be read at all)."""
    try:
        return setting("VIDSTYLE_DEBUG") not in (None, "", "0")
    except VidstyleError:
        return False


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 1,
    and so does anything unexpected (with VIDSTYLE_DEBUG=1, its traceback too)."""
    # The pipeline's warnings (audio dropped, say) as one line each, in the same voice as errors.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("vidstyle: warning: %(message)s"))
    logging.getLogger("vidstyle").addHandler(handler)
    try:
        cli.main(standalone_mode=False)
    except VidstyleError as exc:
        click.echo(f"vidstyle: error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("vidstyle: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("vidstyle: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debugging():
            raise
        message = " ".join(str(exc).split())  # one line, whatever the exception says
        click.echo(f"vidstyle: error: unexpected {type(exc).__name__}: {message} (VIDSTYLE_DEBUG=1 shows the traceback)",
                   err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
