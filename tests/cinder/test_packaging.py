"""What needs no Cinder: the ImportError without it, the generated cinder.conf
sample, and the options the adapter registers."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

from sheepdog_backend import opts
from sheepdog_backend.cinder import options

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "etc" / "cinder" / "cinder.conf.sample"

# Runs with a finder that hides every cinder module, as if Cinder were absent.
WITHOUT_CINDER = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "cinder" or name.startswith("cinder."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
import sheepdog_backend.cinder.options  # works without Cinder
try:
    from sheepdog_backend.cinder import SheepdogCinderDriver
except ImportError as exc:
    print("IMPORTERROR", exc)
else:
    print("IMPORTED")
try:
    import sheepdog_backend.cinder.driver
except ImportError as exc:
    print("IMPORTERROR", exc)
"""


def test_import_without_cinder_names_the_extra() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-c", WITHOUT_CINDER], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(ln.startswith("IMPORTERROR") for ln in lines), lines
    for line in lines:
        assert "sheepdog-backend[cinder]" in line and "Python >= 3.11" in line


def test_cinder_conf_sample_is_current() -> None:
    assert SAMPLE.read_text() == options.render_sample(), (
        "etc/cinder/cinder.conf.sample is stale: run make cinder-sample")


def test_sample_names_the_driver_and_every_option_of_ours() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(SAMPLE.read_text())
    assert parser["DEFAULT"]["enabled_backends"] == "sheepdog"
    assert parser["sheepdog"]["volume_driver"] == "sheepdog_backend.cinder.SheepdogCinderDriver"
    text = SAMPLE.read_text()
    for opt in options.SHEEPDOG_CINDER_OPTS:
        assert f"\n#{opt.dest} =" in text, opt.dest


def test_only_sheepdog_options_are_handed_to_cinder() -> None:
    ours = [opt.dest for opt in options.SHEEPDOG_CINDER_OPTS]
    assert ours and all(name.startswith("sheepdog_") for name in ours)
    assert set(ours) == {o.dest for o in opts.BACKEND_OPTS if o.dest.startswith("sheepdog_")}
    assert options.list_opts() == [("backend_defaults", options.SHEEPDOG_CINDER_OPTS)]
