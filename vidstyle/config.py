"""Settings: an environment variable, else the config file, else the default.

The config file is TOML, at $VIDSTYLE_CONFIG or else
$XDG_CONFIG_HOME/vidstyle/config.toml (~/.config/vidstyle/config.toml); each key
is the environment variable's name without the VIDSTYLE_ prefix, lower-case:

    styles_path = ["/srv/styles", "~/my-styles"]
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

from vidstyle.errors import VidstyleError


def config_file() -> Path:
    if "VIDSTYLE_CONFIG" in os.environ:
        return Path(os.environ["VIDSTYLE_CONFIG"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "vidstyle" / "config.toml"


def _file_settings() -> dict:
    path = config_file()
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise VidstyleError(f"config file {path} is not valid TOML: {exc}") from exc


def setting(env_name: str, default: str | None = None) -> str | None:
    """The value of VIDSTYLE_X from the environment, else key `x` of the config file."""
    if env_name in os.environ:
        return os.environ[env_name]
    value = _file_settings().get(env_name.removeprefix("VIDSTYLE_").lower(), default)
    if isinstance(value, list):  # lists in the file stand for os.pathsep-joined paths
        value = os.pathsep.join(str(v) for v in value)
    return None if value is None else str(value)
