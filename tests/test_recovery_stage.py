"The recovery, superposition_depth and ablation stages: in the tiny preset, planned into their own folders, and refused in one line on bad values."
import contextlib, io, logging

import pytest

from randsae.cli import main


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    out = tmp_path/"outputs"; monkeypatch.setenv("RANDSAE_OUTPUTS", str(out)); monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return out


def run(*argv) -> tuple[int, str, str]:
    "Exit status, stdout and stderr (log records included) of `randsae *argv`, in process."
    out, err = io.StringIO(), io.StringIO(); root = logging.getLogger(); handler = logging.StreamHandler(err); level = root.level
    root.addHandler(handler); root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try: rc = main([str(a) for a in argv])
            except SystemExit as e: rc = e.code
    finally: root.removeHandler(handler); root.setLevel(level)
    return rc, out.getvalue(), err.getvalue()


def test_planned_in_their_own_folders(outputs):
    from randsae.config import PRESETS
    order = list(PRESETS["tiny"].stages)
    assert {"recovery", "superposition_depth", "ablation"} <= set(order) and order[-2:] == ["models", "ledger"]
    rc, out, err = run("reproduce", "--preset", "tiny", "--stages", "recovery,superposition_depth", "--dry-run")
    assert rc == 0, err
    assert f"recovery.ipynb -> {outputs/'recovery'}" in out and f"preserve_amplify.ipynb -> {outputs/'superposition_depth'}" in out, out
    assert not outputs.exists() or not any(outputs.iterdir())   # a dry run writes nothing


@pytest.mark.parametrize("stage, setting, named", [
    ("recovery", "ks=[2, 256]", "k must"),                                  # k must stay below the 256 latents
    ("recovery", 'generators=["gaussian"]', "generators[0]"),
    ("superposition_depth", 'architectures=["dense"]', "architectures[0]"),
    ("superposition_depth", "avg_actives=[1.0, 500.0]", "avg_active"),       # more active features than the 128 there are
])
def test_bad_value_is_one_line(outputs, stage, setting, named):
    rc, _, err = run("reproduce", "--preset", "tiny", "--stages", stage, "--dry-run", "--set", setting)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"randsae: error: stage {stage!r}") and named in lines[0], err


def test_ablation_needs_the_sae_stage(outputs):
    rc, _, err = run("reproduce", "--preset", "tiny", "--stages", "ablation", "--dry-run")
    assert rc == 2 and "need stage 'sae'" in err and "--stages sae,ablation" in err, err
    rc, _, err = run("reproduce", "--preset", "tiny", "--stages", "sae,ablation", "--dry-run", "--set", 'compare_variants=["gpt"]')
    assert rc == 2 and "stage 'ablation'" in err and "compare_variants[0]" in err, err
