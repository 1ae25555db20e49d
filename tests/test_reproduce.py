"End to end: `randsae reproduce` runs the toy stage through papermill, skips finished work, resumes after a crash."
import json, re

import numpy as np
import pandas as pd

from conftest import run_cli

FIGURE_PREFIXES = ["fig04", "fig05", "fig06", "fig07", "fig13", "fig14", "fig16", "fig17"]


def test_toy_stage_end_to_end_and_rerun(tmp_path, params_file):
    p = params_file()
    r = run_cli("reproduce", "--preset", "tiny", "--stages", "toy", "--params", p, "--no-progress", outputs=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # The terminal shows where the run is: each notebook, and the kernel's inner loops (each toy sweep's seeds x coefficients,
    # steps, rate); not ipykernel's TCP warning (the kernel talks over IPC sockets).
    assert "running toy_superposition.ipynb (stage toy)" in r.stderr and "running toy_glove.ipynb (stage toy)" in r.stderr, r.stderr[-3000:]
    sweeps = re.findall(r"SAE sweep: 4 SAEs \(2 seed\(s\) x 2 coefficient\(s\)\), \d+ latents, d=\d+: (\d+)/(\d+) steps \(100%\), [\d.]+[kMG]? samples/s, done in \d+s",
                        r.stderr)
    assert len(sweeps) >= 5 and all(n == total for n, total in sweeps), r.stderr[-3000:]
    assert "without encryption" not in r.stderr + r.stdout and "Traceback" not in r.stderr, r.stderr[-3000:]
    (out,) = [d for d in tmp_path.iterdir() if d.name.startswith("toy--")]   # overrides get their own folder
    # nor, in the executed notebook, tqdm's "IProgress not found" (the kernel runs with KERNEL_WARNING_FILTERS)
    assert "IProgress not found" not in (out/"toy_superposition.ipynb").read_text()
    figs = sorted(f.name for f in (out/"figures").iterdir())
    for prefix in FIGURE_PREFIXES:
        for ext in ("png", "svg", "html"):
            assert any(f.startswith(prefix) and f.endswith(ext) for f in figs), (prefix, ext, figs)
    pareto = pd.read_parquet(out/"tables"/"toy_pareto.parquet")
    assert set(pareto.dataset) == {"superposed inputs", "superposed outputs", "gaussian inputs", "gaussian outputs"}
    assert set(pareto.measure) == {"l0", "l1", "l1_over_sqrt_l2", "hoyer"}
    m = pd.read_parquet(out/"tables"/"toy_sweep_metrics.parquet")
    assert (m.explained_variance <= 1).all() and m.explained_variance.notna().all() and m.mmcs.dropna().between(0, 1).all()
    run = json.loads((out/"run.json").read_text())
    assert run["preset"] == "tiny" and run["overrides"]["n_epochs"] == 1 and "torch" in run["packages"]
    executed = out/"toy_superposition.ipynb"; mtime = executed.stat().st_mtime

    r2 = run_cli("reproduce", "--preset", "tiny", "--stages", "toy", "--params", p, "--no-progress", outputs=tmp_path)
    assert r2.returncode == 0 and "skip" in r2.stderr
    assert executed.stat().st_mtime == mtime, "a finished notebook must not rerun"


def test_crash_mid_stage_loses_nothing(tmp_path, params_file):
    "The second notebook fails (100d GloVe file missing); the rerun skips the first and finishes the second."
    glove_dir = tmp_path/"glove"; glove_dir.mkdir()
    p = params_file(glove_dims=[100], glove_dir=str(glove_dir))
    out_root = tmp_path/"outputs"
    r = run_cli("reproduce", "--preset", "tiny", "--stages", "toy", "--params", p, "--no-progress", outputs=out_root)
    assert r.returncode != 0 and "glove.6B.100d.txt" in r.stderr
    (out,) = list(out_root.iterdir())
    assert (out/".done"/"toy_superposition.json").exists() and not (out/".done"/"toy_glove.json").exists()
    assert not (out/"toy_glove.ipynb").exists(), "a failed notebook leaves no half-written result"
    first = (out/"toy_superposition.ipynb").stat().st_mtime

    rng = np.random.default_rng(0)   # the user now supplies the file (synthetic here: the real one is not offline)
    lines = [f"w{i} " + " ".join(f"{v:.4f}" for v in rng.normal(size=100)) for i in range(700)]
    (glove_dir/"glove.6B.100d.txt").write_text("\n".join(lines) + "\n")
    r = run_cli("reproduce", "--preset", "tiny", "--stages", "toy", "--params", p, "--no-progress", outputs=out_root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out/"toy_superposition.ipynb").stat().st_mtime == first
    assert any(f.name.startswith("fig18") for f in (out/"figures").iterdir())
