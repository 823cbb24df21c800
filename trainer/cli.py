"""`vidstyle train` (also `python -m trainer`): train a style network on a folder of photos."""
from __future__ import annotations

from pathlib import Path

import click

from trainer.train import TrainConfig
from trainer.train import train as run_training
from vidstyle.errors import VidstyleError



@click.command()
@click.argument("style_image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", required=True, type=click.Path(path_type=Path), help="Folder of training photos, searched recursively.")
@click.option("--name", help="Style name.  [default: STYLE_IMAGE's file name without extension]")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoint, log.jsonl and samples/.  [default: runs/NAME]")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Trained style weights NAME.pth; the model card goes beside it.  [default: RUN_DIR/NAME.pth]")
@click.option("--vgg-weights", type=click.Path(path_type=Path),
              help="State dict of vgg16().features with a JSON sidecar of its input convention. "
                   "[default: torchvision's IMAGENET1K_V1, downloaded]")
@click.option("--image-size", default=TrainConfig.image_size, type=click.IntRange(min=1), show_default=True, help="Training crop size in pixels.")
@click.option("--style-size", type=click.IntRange(min=1), help="Resize the style image's long side to this.  [default: 2 * image size]")
@click.option("--iterations", default=TrainConfig.iterations, type=click.IntRange(min=1), show_default=True)
@click.option("--batch-size", default=TrainConfig.batch_size, type=click.IntRange(min=1), show_default=True)
@click.option("--lr", default=TrainConfig.lr, show_default=True)
@click.option("--content-weight", default=TrainConfig.content_weight, show_default=True)
@click.option("--style-weight", default=TrainConfig.style_weight, show_default=True)
@click.option("--tv-weight", default=TrainConfig.tv_weight, show_default=True)
@click.option("--stability-weight", default=TrainConfig.stability_weight, show_default=True,
              help="Weight of the temporal stability term; 0 turns it off.")
@click.option("--holdout", default=TrainConfig.holdout, type=click.IntRange(min=0), show_default=True,
              help="Leave the last N photos (sorted by path) out of training; sample grids show the first of them.")
@click.option("--log-every", default=TrainConfig.log_every, type=click.IntRange(min=1), show_default=True)
@click.option("--sample-every", default=TrainConfig.sample_every, type=click.IntRange(min=1), show_default=True)
@click.option("--checkpoint-every", default=TrainConfig.checkpoint_every, type=click.IntRange(min=1), show_default=True)
@click.option("--seed", default=TrainConfig.seed, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its checkpoint.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch.  [default: torch's choice]")
@click.option("--workers", default=TrainConfig.workers, type=click.IntRange(min=0), show_default=True, help="DataLoader worker processes decoding photos.")
@click.option("--device", help="torch device.  [default: cuda if available, else cpu]")
def train(style_image: Path, name: str | None, run_dir: Path | None, output: Path | None, **options: object) -> None:
    """Train a fast style transfer network for STYLE_IMAGE (Johnson et al. 2016).

    Ctrl-C or SIGTERM finishes the current iteration, saves a checkpoint and
    exits; --resume continues exactly where it stopped.
    """
    name = name or style_image.stem
    run_dir = run_dir or Path("runs") / name
    config = TrainConfig(style_image=style_image, name=name, run_dir=run_dir,
                         output=output or run_dir / f"{name}.pth", **options)
    try:
        stopped_by = run_training(config)
    except VidstyleError as exc:
        raise click.ClickException(str(exc)) from exc
    if stopped_by is not None:
        raise SystemExit(128 + stopped_by)  # the shell's convention for "ended by signal N"
