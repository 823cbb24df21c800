"""Every setting vidstyle reads, declared once: its name, kind, default, meaning and
who reads it (a client: `submit` and the other commands; a worker; or both).

A setting comes from, in order: a command-line flag that stands for it (`vidstyle
worker --device`, handed over with `use_flag`), the environment (VIDSTYLE_X), the
config file, its default. The config file is TOML, at $VIDSTYLE_CONFIG or else
$XDG_CONFIG_HOME/vidstyle/config.toml (~/.config/vidstyle/config.toml), read once
per process; each key is the setting's name without VIDSTYLE_, lower-case:

    styles_path = ["/srv/styles", "~/my-styles"]
    broker_url = "redis://queue-host:6379/0"

`vidstyle config` prints the effective settings and where each came from.
"""
from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from vidstyle.errors import VidstyleError

CLIENT, WORKER, BOTH = "client", "worker", "both"


@dataclass(frozen=True)
class Setting:
    name: str  # VIDSTYLE_X
    kind: str  # how its text is read: text, url, path, paths, seconds, choice, sizes, switch
    default: str | None  # the text it has when set nowhere; None: unset (or computed by its reader)
    read_by: str  # CLIENT, WORKER or BOTH
    meaning: str
    in_file: bool = True  # False: the environment only (where the file is)

    @property
    def key(self) -> str:
        """Its key in the config file."""
        return self.name.removeprefix("VIDSTYLE_").lower()


SETTINGS = (
    Setting("VIDSTYLE_BROKER_URL", "url", None, BOTH, "Redis for the queues; with it, `submit` enqueues"),
    Setting("VIDSTYLE_RESULT_URL", "url", None, BOTH, "Redis for job records and worker presence (default: the broker's)"),
    Setting("VIDSTYLE_STORAGE", "path", None, BOTH, "the storage root shared by clients and workers"),
    Setting("VIDSTYLE_STYLES_PATH", "paths", None, BOTH, "folders of extra styles and upscalers"),
    Setting("VIDSTYLE_JOB_RETENTION", "seconds", "604800", BOTH, "seconds a job record is kept after its last change"),
    Setting("VIDSTYLE_WORKER_LAPSE", "seconds", "10", BOTH, "seconds a worker's presence outlives its last heartbeat"),
    Setting("VIDSTYLE_JOB_TIME_LIMIT", "seconds", "14400", WORKER,
            "hard limit per job, seconds (a clean stop a minute earlier)"),
    Setting("VIDSTYLE_VISIBILITY_TIMEOUT", "seconds", None, WORKER,
            "seconds before Redis hands an unacknowledged message out again (default: time limit + 300)"),
    Setting("VIDSTYLE_RECOVERY_INTERVAL", "seconds", "5", WORKER,
            "seconds between a worker's looks for jobs of lapsed workers"),
    Setting("VIDSTYLE_ON_TERM", "choice", "finish", WORKER, "on SIGTERM, `finish` the running job or `requeue` it"),
    Setting("VIDSTYLE_DEVICE", "text", None, WORKER, "the worker's device, cpu, cuda or cuda:N (default: CUDA when present)"),
    Setting("VIDSTYLE_WARM_SIZES", "sizes", None, WORKER, "frame sizes compiled at start-up, e.g. 1920x1080,1280x720"),
    Setting("VIDSTYLE_COMPILE", "choice", "auto", BOTH, "`auto`, or `1`/`0` to force torch.compile on or off"),
    Setting("VIDSTYLE_PRECISION", "choice", "auto", BOTH,
            "`auto` (fp16 on CUDA, bf16 on CPUs with native bf16) or `fp32`"),
    Setting("VIDSTYLE_CACHE_DIR", "path", None, BOTH,
            "where compiled networks are cached (default: $XDG_CACHE_HOME/vidstyle)"),
    Setting("VIDSTYLE_VGG_WEIGHTS", "path", None, BOTH,
            "VGG-16 weights for training, `eval` and --optimise (default: torchvision's, downloaded; "
            "a worker never downloads: its training jobs need this or `train --vgg-weights`)"),
    Setting("VIDSTYLE_CHECKPOINT_SECONDS", "seconds", "120", WORKER,
            "a training job writes a checkpoint at least this often, so a lost worker loses at most this much"),
    Setting("VIDSTYLE_DEBUG", "switch", "0", CLIENT, "`1`: show the traceback of an unexpected error"),
    Setting("VIDSTYLE_CONFIG", "path", None, BOTH,
            "the config file (default: ~/.config/vidstyle/config.toml)", in_file=False),
)
DECLARED = {setting.name: setting for setting in SETTINGS}

# Values handed over by command-line flags (name -> (value, the flag)); pool processes,
# forked from the worker's main process, inherit them.
_flags: dict[str, tuple[str, str]] = {}


def use_flag(name: str, value: str, flag: str) -> None:
    """A flag given on the command line stands for setting `name` in this process and its forked children."""
    _declared(name)
    _flags[name] = (value, flag)


def config_file() -> Path:
    if "VIDSTYLE_CONFIG" in os.environ:
        return Path(os.environ["VIDSTYLE_CONFIG"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "vidstyle" / "config.toml"


@functools.cache
def file_values(path: Path) -> dict:
    """The config file's keys, parsed once per process; {} when there is none."""
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise VidstyleError(f"config file {path} is not valid TOML: {exc}") from exc


def setting(name: str) -> str | None:
    """The effective text of setting `name` (flag, environment, config file, default), None if unset."""
    return lookup(name)[0]


def lookup(name: str) -> tuple[str | None, str]:
    """(the effective text of setting `name`, where it came from)."""
    declared = _declared(name)
    if name in _flags:
        value, flag = _flags[name]
        return value, flag
    if name in os.environ:
        return os.environ[name], "environment"
    if declared.in_file:
        path = config_file()
        value = file_values(path).get(declared.key)
        if value is not None:
            if isinstance(value, list):  # lists in the file stand for os.pathsep-joined paths
                value = os.pathsep.join(str(v) for v in value)
            return str(value), f"config file {path}"
    return declared.default, "default"


def seconds(name: str, default: float | None = None) -> float:
    """A positive number of seconds from setting `name` (`default` where its default is computed)."""
    value = setting(name)
    try:
        result = float(value) if value is not None else default
    except ValueError:
        result = 0
    if result is None or result <= 0:
        raise VidstyleError(f"{name} must be a positive number of seconds, not '{value}'")
    return result


def unknown_file_keys() -> list[str]:
    """Keys of the config file that name no setting: set there, they would do nothing."""
    known = {setting.key for setting in SETTINGS if setting.in_file}
    return sorted(set(file_values(config_file())) - known)


def _declared(name: str) -> Setting:
    try:
        return DECLARED[name]
    except KeyError:
        raise KeyError(f"{name} is not a declared setting (vidstyle.settings.SETTINGS)") from None
