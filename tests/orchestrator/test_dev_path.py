"""The README's development path stays consistent with what ``make demo`` writes (fast, no training).

The README tells a fresh clone to start the three workers and train the config ``make demo``
wrote. That config names its data file by absolute path under the clone's ``data/``, and the
data worker reads local files only inside its allowed roots. This test reads the commands from
the README's Development block, lays out a clone as ``make demo`` leaves it, and puts the demo's
data file through the data worker's own confinement with the environment the README exports.
"""

import inspect
import os
import re
import shlex
from pathlib import Path

import pytest

from durabert.data_worker.demo_data import OUTPUT_NAME
from durabert.data_worker.sources import resolve_data_files
from durabert.orchestrator import demo
from durabert.shared.settings import ENV_PREFIX, DurabertSettings

REPO = Path(__file__).resolve().parents[2]


def development_block() -> list[str]:
    """The command lines of the README's Development section, comments stripped."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Development", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match, "README Development has no bash block"
    lines = [shlex.split(line, comments=True) for line in match.group(1).splitlines()]
    return [" ".join(words) for words in lines if words]


def exported(lines: list[str], clone: Path) -> dict[str, str]:
    """The variables the block exports, with ``$PWD`` being the clone's root."""
    env = {}
    for line in lines:
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value.replace("$PWD", str(clone))
    return env


def demo_dirs() -> tuple[Path, Path]:
    """The state and data folders ``make demo`` passes to the demo (relative to the clone)."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    state_dir = re.search(r"^STATE_DIR \?= (\S+)$", makefile, re.MULTILINE)
    recipe = re.search(r"^demo:.*\n\t(.*)$", makefile, re.MULTILINE)
    assert state_dir
    assert recipe
    args = shlex.split(recipe.group(1).replace("$(STATE_DIR)", state_dir.group(1)))
    return Path(args[args.index("--state-dir") + 1]), Path(args[args.index("--data-dir") + 1])


def test_the_readme_trains_the_config_the_demo_writes() -> None:
    state_dir, _ = demo_dirs()
    [train] = [line for line in development_block() if line.startswith("uv run durabert train ")]
    assert Path(train.split()[4]) == state_dir / "demo.yaml"
    # The demo writes its config under this name in its state folder.
    assert 'state_dir / "demo.yaml"' in inspect.getsource(demo.run_demo)


def test_the_demo_data_lies_inside_the_roots_the_readme_workers_allow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone, home = tmp_path / "clone", tmp_path / "home"
    _, data_dir = demo_dirs()
    data_file = clone / data_dir / OUTPUT_NAME
    data_file.parent.mkdir(parents=True)
    data_file.write_text('{"sentence": "good", "label": "positive"}\n')
    # The workers' environment: the shell's, with only what the README exports of durabert's.
    monkeypatch.setenv("HOME", str(home))
    for name in [name for name in list(os.environ) if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in exported(development_block(), clone).items():
        monkeypatch.setenv(name, value)
    settings = DurabertSettings()
    config = demo.demo_config(data_file.resolve(), "my-run")
    assert config.data_files is not None
    # The data worker's own check: raises "outside the allowed data roots" if the README is wrong.
    resolved = resolve_data_files(config.data_files, settings.data_roots, settings.data_dir)
    assert resolved in ([str(data_file.resolve())], str(data_file.resolve()))
