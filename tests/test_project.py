"The repository tells one story: exported code equals the notebooks, README equals nbs/index.ipynb."
import filecmp, shutil, subprocess, sys
from pathlib import Path

from conftest import ROOT


def test_nbdev_export_changes_nothing(tmp_path):
    for name in ["pyproject.toml", "nbs", "randsae"]:
        src = ROOT/name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path/name, **({"ignore": shutil.ignore_patterns("_scratch", "__pycache__", ".ipynb_checkpoints")} if src.is_dir() else {}))
    before = {p.name: p.read_text() for p in (tmp_path/"randsae").glob("*.py")}
    subprocess.run([str(Path(sys.executable).parent/"nbdev-export")], cwd=tmp_path, check=True, capture_output=True)
    after = {p.name: p.read_text() for p in (tmp_path/"randsae").glob("*.py")}
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"run `make export` and commit: {changed}"


def test_readme_is_rendered_index():
    from randsae.docs import render_readme
    assert (ROOT/"README.md").read_text() == render_readme(), "README.md is stale: run `make readme`"


def test_readme_commands_exist():
    text = (ROOT/"README.md").read_text(); make = (ROOT/"Makefile").read_text()
    assert "make reproduce" in text and "make test" in text
    assert "\nreproduce:" in make and "\ntest:" in make and "randsae reproduce --preset tiny" in make
