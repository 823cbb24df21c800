"""Styles and upscalers: a trained network's weights plus its model card, and where to find them.

A style is two files side by side: ``NAME.pth`` (a ``state_dict`` of
:class:`vidstyle.model.TransformerNet`, fp16 or fp32, saved with ``torch.save``)
and ``NAME.json`` (the model card: style name, training settings, checksum of
the source style image). Styles are looked up in the package's own ``styles/``
folder, then in every folder listed in ``VIDSTYLE_STYLES_PATH`` (os.pathsep
separated) or the config file's ``styles_path``, then in the fleet's ``styles/``
under the storage root (VIDSTYLE_STORAGE); ``--style path/to/NAME.pth`` names a
file directly.

An upscaler is the same pair for :class:`vidstyle.model.UpscalerNet`, named by
its factor: ``x4.pth`` and ``x4.json``, whose card says ``"task": "upscale"``
and ``"factor"``. Built-in ones live in the package's ``upscalers/`` folder;
the same search path adds others, and ``--factor path/to/x4.pth`` names a file.
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from vidstyle.settings import setting
from vidstyle.errors import VidstyleError
from vidstyle.model import (NETWORKS, STYLE_NETWORKS, UPSCALE_FACTORS, ArbitraryStyleNet, CompactTransformerNet, StyleThenUpscale,
                            TransformerNet, UpscalerNet)
from vidstyle.paintings import read_painting

BUILTIN_DIR = Path(__file__).with_name("styles")
BUILTIN_UPSCALERS_DIR = Path(__file__).with_name("upscalers")
ARBITRARY_WEIGHTS = Path(__file__).with_name("arbitrary") / "arbitrary.pth"
UPSCALE_TASK = "upscale"  # a model card's "task" for an upscaler (a style's card has none)
# A style's compact network (vidstyle distill) lives in this folder beside its weights: compact/NAME.pth + .json.
COMPACT_FOLDER = "compact"
STYLES_PATH_ENV = "VIDSTYLE_STYLES_PATH"
QUALITY_FIGURE = "median_lbfgs_iterations_from_noise"  # a model card's measured quality (benchmarks/style_quality.py)
FLICKER_FIGURE = "mean_flicker_ratio"  # its mean flicker on real clips with the temporal stage (the same benchmark)
COMPACT_QUALITY_SHARE = 0.9
# The fleet's styles folder, under the shared storage root (VIDSTYLE_STORAGE): where trainings on the
# fleet publish (vidstyle.workers.training), searched by every client and worker that shares the storage.
FLEET_STYLES_FOLDER = "styles"


@dataclass
class Style:
    name: str
    weights_path: Path
    card: dict = field(default_factory=dict)

    @property
    def network(self) -> str:
        """Which network the weights are for: "full" (TransformerNet) or "compact" (CompactTransformerNet)."""
        return self.card.get("network", "full")

    def load_network(self) -> TransformerNet | CompactTransformerNet:
        """Build the style's network in fp32 with its weights, in eval mode."""
        if self.network not in STYLE_NETWORKS:
            raise VidstyleError(f"style {self.name}: its model card's network {self.network!r} is none of "
                                f"{', '.join(STYLE_NETWORKS)}")
        state = load_state(self.weights_path, "style")
        return _load_into(STYLE_NETWORKS[self.network].for_state(state), state, self.weights_path, "style")

    def compact(self) -> Style | None:
        """This style's compact network, where it has one: compact/NAME.pth beside its weights."""
        weights = self.weights_path.parent / COMPACT_FOLDER / self.weights_path.name
        return _style_from_weights(weights, _read_card(weights)) if weights.is_file() else None

    def with_network(self, network: str) -> Style:
        """The style run with `network` (one of NETWORKS): "compact" needs a compact network,
        "auto" takes it where there is one that keeps the full network's look."""
        if network not in NETWORKS:
            raise VidstyleError(f"--network must be one of {', '.join(NETWORKS)}, not {network!r}")
        if self.network != "full":  # named by the path of its compact weights
            if network == "full":
                raise VidstyleError(f"{self.weights_path} is a {self.network} network; name the style's full one")
            return self
        if network == "full":
            return self
        compact = self.compact()
        if compact is None and network == "compact":
            raise VidstyleError(f"style {self.name} has no compact network (make one with `vidstyle distill {self.name}`)")
        if network == "auto" and compact is not None and not compact.keeps_the_look_of(self):
            return self
        return compact or self

    def keeps_the_look_of(self, teacher: Style) -> bool:
        """Whether this network's model card measures at least COMPACT_QUALITY_SHARE of the teacher's
        quality (equivalent L-BFGS iterations) and no more flicker on real clips with the temporal
        stage: "auto" runs a faster network only if it paints as well and as steadily."""
        mine, theirs = ({figure: style.card.get("evaluation", {}).get(figure) for figure in (QUALITY_FIGURE, FLICKER_FIGURE)}
                        for style in (self, teacher))
        if None in (*mine.values(), *theirs.values()):
            return False  # not measured: not known to keep the look
        return mine[QUALITY_FIGURE] >= COMPACT_QUALITY_SHARE * theirs[QUALITY_FIGURE] and mine[FLICKER_FIGURE] <= theirs[FLICKER_FIGURE]


@dataclass
class Painting:
    """Any painting as a style, through the any-painting network: its style code is computed
    once, here, and baked into a TransformerNet that the pipeline runs as it runs any style."""

    path: Path
    weights_path: Path = ARBITRARY_WEIGHTS

    @property
    def name(self) -> str:
        return self.path.stem

    @functools.cached_property
    def card(self) -> dict:
        return _read_card(self.weights_path)

    @functools.cached_property
    def pixels(self) -> torch.Tensor:
        """The painting as the network takes it, read once; a one-line error for a bad file."""
        return read_painting(self.path, self.card.get("style_size", 256))

    def load_network(self) -> TransformerNet:
        painting = self.pixels
        net = _load_into(ArbitraryStyleNet(), load_state(self.weights_path, "any-painting network"),
                         self.weights_path, "any-painting network")
        return net.for_painting(painting)


@dataclass
class Upscaler:
    factor: int
    weights_path: Path
    card: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"x{self.factor}"

    def load_network(self) -> UpscalerNet:
        """Build an UpscalerNet in fp32 with these weights, in eval mode; a training checkpoint
        (its "model" entry) loads too, so that a run can be measured while it trains."""
        state = load_state(self.weights_path, "upscaler")
        # How it upsamples, and whether it combs, is not in the weights: a checkpoint's run settings or the card say.
        settings = state.get("identity", self.card)
        weights = state.get("model", state)
        net = UpscalerNet(self.factor, blocks=UpscalerNet.blocks_in(weights),
                          upsampling=settings.get("upsampling", "nearest"), comb=settings.get("comb", False))
        return _load_into(net, weights, self.weights_path, "upscaler")


def load_state(weights_path: Path, what: str) -> dict:
    """A state dict read with weights_only=True; one-line errors for anything else."""
    if not Path(weights_path).is_file():
        raise VidstyleError(f"{what} weights not found: {weights_path}")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as exc:
        raise VidstyleError(f"{what} weights {weights_path} are not a readable weights file: {_first_line(exc)}") from exc
    if not isinstance(state, dict):
        raise VidstyleError(f"{what} weights {weights_path} are not a state dict")
    return state


def _load_into(net: torch.nn.Module, state: dict, weights_path: Path, what: str) -> torch.nn.Module:
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, AttributeError) as exc:
        raise VidstyleError(f"{what} weights {weights_path} do not fit vidstyle's {type(net).__name__}: "
                            f"{_first_line(exc)}") from exc
    return net.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def style_dirs() -> list[Path]:
    """Where styles are looked for, each shadowing the one before: the built-in ones, VIDSTYLE_STYLES_PATH's,
    then the fleet's (its trainings may replace any name, with `--force`). Read at each call, so a style
    published meanwhile is found without a restart."""
    extra = [Path(p).expanduser() for p in (setting(STYLES_PATH_ENV) or "").split(os.pathsep) if p]
    storage = setting("VIDSTYLE_STORAGE")
    return [BUILTIN_DIR, *extra, *([Path(storage).expanduser() / FLEET_STYLES_FOLDER] if storage else [])]


def _read_card(weights: Path) -> dict:
    card_path = weights.with_suffix(".json")
    if not card_path.is_file():
        return {}
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise VidstyleError(f"model card {card_path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise VidstyleError(f"model card {card_path} is not a JSON object")
    return card


def _style_from_weights(weights: Path, card: dict) -> Style:
    return Style(name=card.get("name", weights.stem), weights_path=weights, card=card)


def _upscaler_from_weights(weights: Path, card: dict) -> Upscaler:
    """The factor from the card, else from the weights (one x2 layer per octave)."""
    if "factor" in card:
        factor = card["factor"]
    else:
        octaves = {key.split(".")[1] for key in load_state(weights, "upscaler") if key.startswith("upsample.")}
        factor = 2 ** len(octaves)
    if factor not in UPSCALE_FACTORS:
        raise VidstyleError(f"upscaler {weights} has factor {factor}; vidstyle's UpscalerNet takes "
                            f"{', '.join(map(str, UPSCALE_FACTORS))}")
    return Upscaler(factor=factor, weights_path=weights, card=card)


def _weights_in(folders: list[Path]) -> Iterator[tuple[Path, dict]]:
    for folder in folders:
        if folder.is_dir():
            for weights in sorted(folder.glob("*.pth")):
                yield weights, _read_card(weights)


def available_styles() -> dict[str, Style]:
    """All styles by name; a later folder in the search path shadows an earlier one."""
    return {weights.stem: _style_from_weights(weights, card) for weights, card in _weights_in(style_dirs())
            if card.get("task") != UPSCALE_TASK}


def available_upscalers() -> dict[int, Upscaler]:
    """All upscalers by factor: the built-in ones, then the search path's (which shadow them)."""
    found = (_upscaler_from_weights(weights, card) for weights, card in _weights_in([BUILTIN_UPSCALERS_DIR, *style_dirs()])
             if card.get("task") == UPSCALE_TASK)
    return {upscaler.factor: upscaler for upscaler in found}


def find_style(name_or_path: str, network: str | None = None) -> Style:
    """A style by registry name, or by the path of its weights file; with a `network` (one of
    NETWORKS), its network chosen so (Style.with_network), else the weights as named."""
    if _is_path(name_or_path):
        weights = _existing(name_or_path, "style")
        style = _style_from_weights(weights, _read_card(weights))
        return style.with_network(network) if network else style
    styles = available_styles()
    if name_or_path in styles:
        return styles[name_or_path].with_network(network) if network else styles[name_or_path]
    names = ", ".join(sorted(styles)) or "none installed"
    raise VidstyleError(f"unknown style '{name_or_path}' (available: {names})")


def save_style(net: torch.nn.Module, weights_path: Path, card: dict) -> None:
    """Write NAME.pth (fp16, which is plenty for inference) and NAME.json atomically: a style's,
    or another network's with its model card (the trainer saves upscalers so too)."""
    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights_path.with_name(weights_path.name + ".part")
    torch.save({k: v.detach().half().cpu() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, weights_path)
    card_path = weights_path.with_suffix(".json")
    tmp_card = card_path.with_name(card_path.name + ".part")
    tmp_card.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp_card, card_path)


def find_upscaler(factor_or_path: str) -> Upscaler:
    """An upscaler by factor ("4"), or by the path of its weights file."""
    if _is_path(factor_or_path):
        weights = _existing(factor_or_path, "upscaler")
        return _upscaler_from_weights(weights, _read_card(weights))
    upscalers = available_upscalers()
    installed = ", ".join(f"x{factor}" for factor in sorted(upscalers)) or "none"
    try:
        factor = int(factor_or_path.lower().removeprefix("x"))
    except ValueError:
        raise VidstyleError(f"upscale factor must be a whole number or a .pth file, not '{factor_or_path}' "
                            f"(installed: {installed})") from None
    if factor not in upscalers:
        raise VidstyleError(f"no x{factor} upscaler installed (installed: {installed})")
    return upscalers[factor]


def _is_path(name_or_path: str) -> bool:
    return Path(name_or_path).suffix == ".pth" or os.sep in name_or_path


def _existing(path: str, what: str) -> Path:
    if not Path(path).is_file():
        raise VidstyleError(f"{what} weights not found: {path}")
    return Path(path)


@dataclass
class Treatment:
    """What a run does to every frame: a style, an upscale, or a style then an upscale."""

    style: Style | Painting | None = None
    upscaler: Upscaler | None = None

    @property
    def name(self) -> str:
        """For output names: udnie, x4, udnie.x4."""
        return ".".join(part.name for part in (self.style, self.upscaler) if part is not None)

    @property
    def weights_paths(self) -> list[Path]:
        return [part.weights_path for part in (self.style, self.upscaler) if part is not None]

    def load_network(self) -> torch.nn.Module:
        if self.style is None:
            return self.upscaler.load_network()
        if self.upscaler is None:
            return self.style.load_network()
        return StyleThenUpscale(self.style.load_network(), self.upscaler.load_network())


def find_treatment(style: str | None = None, upscale: str | None = None, painting: Path | None = None,
                   network: str | None = None) -> Treatment:
    """The style (a name or .pth, or any painting's file) and upscaler (a factor or .pth) a run
    applies; at least one; the style's network chosen by `network` as in find_style. A painting is
    read now: a bad one fails before any frame is decoded."""
    if painting is not None and network == "compact":
        raise VidstyleError("any painting runs on the any-painting network; --network compact is for trained styles")
    if style is not None and painting is not None:
        raise VidstyleError("name a trained style (--style) or any painting (--style-image), not both")
    if style is None and painting is None and upscale is None:
        raise VidstyleError("nothing to do: name a style, an upscale factor, or both")
    chosen = find_style(style, network) if style is not None else Painting(Path(painting)) if painting is not None else None
    if isinstance(chosen, Painting):
        chosen.pixels  # read now (and kept): a bad painting fails before any frame is decoded
    return Treatment(chosen, find_upscaler(upscale) if upscale is not None else None)
