"""Styles: a trained TransformerNet's weights plus its model card, and where to find them.

A style is two files side by side: ``NAME.pth`` (a ``state_dict`` of
:class:`vidstyle.model.TransformerNet`, fp16 or fp32, saved with ``torch.save``)
and ``NAME.json`` (the model card: style name, training settings, checksum of
the source style image). Styles are looked up in the package's own ``styles/``
folder, then in every folder listed in ``VIDSTYLE_STYLES_PATH`` (os.pathsep
separated) or the config file's ``styles_path``; ``--style path/to/NAME.pth``
names a file directly.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vidstyle.config import setting
from vidstyle.errors import VidstyleError
from vidstyle.model import TransformerNet

BUILTIN_DIR = Path(__file__).with_name("styles")
STYLES_PATH_ENV = "VIDSTYLE_STYLES_PATH"


@dataclass
class Style:
    name: str
    weights_path: Path
    card: dict = field(default_factory=dict)

    def load_network(self) -> TransformerNet:
        """Build a TransformerNet in fp32 with this style's weights, in eval mode."""
        try:
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as exc:
            raise VidstyleError(f"style weights {self.weights_path} are not a readable weights file: {_first_line(exc)}") from exc
        net = TransformerNet()
        if not isinstance(state, dict):
            raise VidstyleError(f"style weights {self.weights_path} are not a TransformerNet state dict")
        try:
            net.load_state_dict({k: v.float() for k, v in state.items()})
        except (RuntimeError, AttributeError) as exc:
            raise VidstyleError(f"style weights {self.weights_path} do not fit vidstyle's TransformerNet: {_first_line(exc)}") from exc
        return net.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def style_dirs() -> list[Path]:
    extra = [Path(p).expanduser() for p in (setting(STYLES_PATH_ENV) or "").split(os.pathsep) if p]
    return [BUILTIN_DIR, *extra]


def _style_from_weights(weights: Path) -> Style:
    card_path = weights.with_suffix(".json")
    card = {}
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as exc:
            raise VidstyleError(f"model card {card_path} is not valid JSON: {exc}") from exc
    return Style(name=card.get("name", weights.stem), weights_path=weights, card=card)


def available_styles() -> dict[str, Style]:
    """All styles by name; a later folder in the search path shadows an earlier one."""
    found: dict[str, Style] = {}
    for folder in style_dirs():
        if folder.is_dir():
            for weights in sorted(folder.glob("*.pth")):
                found[weights.stem] = _style_from_weights(weights)
    return found


def find_style(name_or_path: str) -> Style:
    """A style by registry name, or by the path of its weights file."""
    path = Path(name_or_path)
    if path.suffix == ".pth" or os.sep in name_or_path:
        if not path.is_file():
            raise VidstyleError(f"style weights not found: {name_or_path}")
        return _style_from_weights(path)
    styles = available_styles()
    if name_or_path in styles:
        return styles[name_or_path]
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
