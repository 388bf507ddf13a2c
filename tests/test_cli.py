"""Command lines: every option has a help line that shows its default; the console scripts resolve after install."""
import argparse
import importlib
import shutil
import subprocess
from importlib import metadata

import pytest

from synthgen import preview, sample
from synthgen.metrics import cli as evaluate
from synthgen.segment import cli as predict
from synthgen.train import run

PARSERS = {"train/run.py": run.parser, "train/predict.py": predict.parser, "train/evaluate.py": evaluate.parser,
           "synthgen.preview": preview.parser, "synthgen.sample": sample.parser}


def _rendered(parser: argparse.ArgumentParser, action) -> str:
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_and_shows_its_default(name):
    parser = PARSERS[name]()
    problems = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = _rendered(parser, action)
        if not (action.help and action.help.strip()):
            problems.append(f"no help: {text}")
        elif not action.option_strings or action.nargs == 0 or action.required:
            continue                         # positionals, flags and required options have no default to show
        elif action.default is not None:
            shown = "x".join(map(str, action.default)) if isinstance(action.default, tuple) else str(action.default)
            if "default" not in text or (shown not in text and str(action.default) not in text):
                problems.append(f"default {action.default!r} not shown: {text}")
        elif not ("default" in text or (name == "train/run.py" and "[paper: " in text)):
            problems.append(f"does not say what happens when not given: {text}")
    assert not problems, f"{name}:\n" + "\n".join(problems)


def _console_scripts():
    try:
        dist = metadata.distribution("synthgen")
    except metadata.PackageNotFoundError:
        pytest.skip("synthgen is not installed (pip install -e .)")
    return {ep.name: ep for ep in dist.entry_points if ep.group == "console_scripts"}


def test_console_scripts_resolve_to_the_clis():
    scripts = _console_scripts()
    assert {"synthgen-train", "synthgen-predict", "synthgen-evaluate", "synthgen-sample",
            "synthgen-preview"} <= set(scripts)
    for name, ep in scripts.items():
        module, func = ep.value.split(":")
        assert getattr(importlib.import_module(module), func) is ep.load(), name
    exe = shutil.which("synthgen-evaluate")
    if exe is None:
        pytest.skip("console scripts are not on PATH (venv not activated)")
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--pred-suffix" in res.stdout and "(default: pooled)" in res.stdout
