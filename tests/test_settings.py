"""Settings: one declaration each (vidstyle.settings), the environment and the config
file read through it alike, the file parsed once per process, `vidstyle config`."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vidstyle import settings
from vidstyle.errors import VidstyleError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file of this test's own, the environment clear of every setting."""
    for declared in settings.SETTINGS:
        monkeypatch.delenv(declared.name, raising=False)
    path = tmp_path / "config.toml"
    monkeypatch.setenv("VIDSTYLE_CONFIG", str(path))
    monkeypatch.setattr(settings, "_flags", {})
    return path


def test_the_environment_wins_over_the_file_and_the_file_over_the_default(config: Path, monkeypatch):
    config.write_text('precision = "fp32"\njob_retention = 60\nstyles_path = ["/a", "/b"]\n')
    assert settings.lookup("VIDSTYLE_PRECISION") == ("fp32", f"config file {config}")
    assert settings.setting("VIDSTYLE_STYLES_PATH") == "/a:/b"
    assert settings.seconds("VIDSTYLE_JOB_RETENTION") == 60
    assert settings.lookup("VIDSTYLE_COMPILE") == ("auto", "default")
    assert settings.lookup("VIDSTYLE_STORAGE") == (None, "default")
    monkeypatch.setenv("VIDSTYLE_PRECISION", "auto")
    assert settings.lookup("VIDSTYLE_PRECISION") == ("auto", "environment")
    settings.use_flag("VIDSTYLE_PRECISION", "fp32", "--precision")
    assert settings.lookup("VIDSTYLE_PRECISION") == ("fp32", "--precision")


def test_precision_and_debug_in_the_file_take_effect(config: Path):
    """They were read from the environment alone: set in the file they did nothing."""
    import torch

    from vidstyle.inference import autocast_dtype

    config.write_text('precision = "fp32"\n')
    assert autocast_dtype(torch.device("cpu")) is None
    env = {"VIDSTYLE_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    config.write_text("debug = 1\n")
    # An unexpected error: with debug on, its traceback; the bad --size is no such error, so make one.
    crash = "import sys, vidstyle.cli as c; sys.argv = ['vidstyle', 'styles']; c.cli.commands['styles'].callback = lambda: 1 / 0; c.main()"
    shown = subprocess.run([sys.executable, "-c", crash], env=env, capture_output=True, text=True)
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "ZeroDivisionError" in shown.stderr
    config.write_text("debug = 0\n")
    hidden = subprocess.run([sys.executable, "-c", crash], env=env, capture_output=True, text=True)
    assert hidden.returncode == 1 and "Traceback" not in hidden.stderr
    assert hidden.stderr.strip().startswith("vidstyle: error: unexpected ZeroDivisionError")


def test_the_file_is_parsed_once_per_process(config: Path, monkeypatch):
    config.write_text('storage = "/first"\n')
    settings.file_values.cache_clear()
    assert settings.setting("VIDSTYLE_STORAGE") == "/first"
    config.write_text('storage = "/second"\n')
    assert settings.setting("VIDSTYLE_STORAGE") == "/first"
    assert settings.file_values.cache_info().misses == 1


def test_a_bad_file_or_value_is_one_clear_error(config: Path):
    config.write_text("storage = \n")
    with pytest.raises(VidstyleError, match="is not valid TOML"):
        settings.setting("VIDSTYLE_STORAGE")
    settings.file_values.cache_clear()
    config.write_text("worker_lapse = -3\n")
    with pytest.raises(VidstyleError, match="VIDSTYLE_WORKER_LAPSE must be a positive number of seconds"):
        settings.seconds("VIDSTYLE_WORKER_LAPSE")


def test_only_declared_settings_can_be_read():
    with pytest.raises(KeyError, match="not a declared setting"):
        settings.setting("VIDSTYLE_NO_SUCH_THING")


def test_vidstyle_config_prints_each_setting_and_its_source(config: Path, tmp_path: Path):
    config.write_text('storage = "/srv/share"\nbroker_url = "redis://:secret@queue:6379/0"\ncolour = "red"\n')
    env = {"VIDSTYLE_CONFIG": str(config), "VIDSTYLE_COMPILE": "0", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "vidstyle.cli", "config"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = {line.split("=", 1)[0]: line for line in result.stdout.splitlines() if line.startswith("VIDSTYLE_")}
    assert set(lines) == set(settings.DECLARED)
    assert re.fullmatch(rf"VIDSTYLE_STORAGE=/srv/share +# config file {re.escape(str(config))}; read by both", lines["VIDSTYLE_STORAGE"])
    assert re.fullmatch(r"VIDSTYLE_COMPILE=0 +# environment; read by both", lines["VIDSTYLE_COMPILE"])
    assert re.fullmatch(r"VIDSTYLE_ON_TERM=finish +# default; read by worker", lines["VIDSTYLE_ON_TERM"])
    assert re.fullmatch(r"VIDSTYLE_DEVICE= +# unset; read by worker", lines["VIDSTYLE_DEVICE"])
    assert "secret" not in result.stdout  # passwords in URLs are not printed
    assert "redis://:***@queue:6379/0" in lines["VIDSTYLE_BROKER_URL"]
    assert "colour" in result.stderr and "not a setting" in result.stderr


def test_the_readme_settings_table_is_the_declared_settings():
    rows = re.findall(r"^\| `(VIDSTYLE_\w+)` \| (\w+) \|", (ROOT / "README.md").read_text(), re.M)
    assert dict(rows) == {s.name: s.read_by for s in settings.SETTINGS}


def test_no_module_reads_a_setting_from_the_environment_itself():
    reads = re.compile(r'os\.environ(?:\.get\(|\[)\s*"VIDSTYLE_|"VIDSTYLE_\w+"\s+in\s+os\.environ')
    offenders = [str(path.relative_to(ROOT)) for package in ("vidstyle", "workers", "trainer")
                 for path in (ROOT / package).rglob("*.py")
                 if path.name != "settings.py" and reads.search(path.read_text())]
    assert not offenders


def test_every_declared_setting_is_read_somewhere():
    sources = "".join(path.read_text() for package in ("vidstyle", "workers", "trainer")
                      for path in (ROOT / package).rglob("*.py") if path.name != "settings.py")
    unread = [s.name for s in settings.SETTINGS if s.in_file and f'"{s.name}"' not in sources]
    assert not unread
