"Faults: a run killed at random points resumes to the same tables; a second run on the same folder is refused; nothing stale is left."
import os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from conftest import RANDSAE, ROOT, TINY_TOY, run_cli

LEFTOVER_GLOBS = [".*.tmp*", "*.failed.ipynb", ".checkpoint", ".*.old"]


def start_cli(*args, outputs: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", RANDSAE_OUTPUTS=str(outputs))
    env.setdefault("RANDSAE_LLM_CACHE", str(ROOT/"outputs"/"cache"/"llm"))
    return subprocess.Popen([str(RANDSAE), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def kill(proc: subprocess.Popen, whole_tree: bool = True) -> None:
    "SIGKILL `proc` and, with `whole_tree`, every process it started (the papermill kernel runs in a session of its own)."
    try: victims = [psutil.Process(proc.pid), *(psutil.Process(proc.pid).children(recursive=True) if whole_tree else [])]
    except psutil.NoSuchProcess: victims = []
    for p in victims:
        try: p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess: pass
    proc.wait(); psutil.wait_procs(victims, timeout=30)


def tables(root: Path) -> dict[str, pd.DataFrame]:
    return {str(p.relative_to(root)): pd.read_parquet(p) for p in sorted(root.rglob("tables/**/*.parquet"))}


def assert_same_tables(got: Path, want: Path) -> None:
    a, b = tables(got), tables(want)
    assert sorted(a) == sorted(b) and a
    for name in a: pd.testing.assert_frame_equal(a[name], b[name], obj=name)


def leftovers(root: Path) -> list[Path]:
    return [p for g in LEFTOVER_GLOBS for p in root.rglob(g)]


def kill_at_random_points(args, outputs: Path, seconds: float, n_kills: int, seed: int) -> list[float]:
    """Run `randsae *args` and SIGKILL it at `n_kills` seeded random moments of an uninterrupted run of `seconds`; return them.
    Each rerun resumes, so it is killed after the time between two moments (plus its start-up); a rerun that finishes first ends
    the series. The last kill spares the kernel (only the runner dies) to check that an orphaned kernel writes nothing stale."""
    points = sorted(np.random.default_rng(seed).uniform(0.1 * seconds, 0.9 * seconds, n_kills).round(1).tolist())
    killed, prev = [], 0.0
    for i, t in enumerate(points):
        proc = start_cli(*args, outputs=outputs); time.sleep(t - prev + (3 if i else 0)); prev = t
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()[-2000:]
            break
        kill(proc, whole_tree=i < n_kills - 1); killed.append(t)
    assert killed, "no run was killed"
    return killed


def test_toy_stage_killed_anywhere_resumes_to_the_same_tables(tmp_path):
    p = tmp_path/"params.yaml"; p.write_text(yaml.safe_dump(TINY_TOY))
    args = ["reproduce", "--preset", "tiny", "--stages", "toy", "--params", p, "--no-progress"]
    t0 = time.perf_counter(); ref = run_cli(*args, outputs=tmp_path/"ref"); seconds = time.perf_counter() - t0
    assert ref.returncode == 0, ref.stderr[-3000:]

    points = kill_at_random_points(args, tmp_path/"killed", seconds, n_kills=3, seed=14)
    r = run_cli(*args, outputs=tmp_path/"killed")
    assert r.returncode == 0, (points, r.stderr[-3000:])
    assert_same_tables(tmp_path/"killed", tmp_path/"ref")
    assert not leftovers(tmp_path/"killed"), leftovers(tmp_path/"killed")


def test_second_run_on_the_same_folder_is_refused_and_a_killed_holder_is_taken_over(tmp_path):
    p = tmp_path/"params.yaml"; p.write_text(yaml.safe_dump(TINY_TOY))
    args = ["reproduce", "--preset", "tiny", "--stages", "toy", "--params", p, "--no-progress"]
    first = start_cli(*args, outputs=tmp_path)
    deadline = time.time() + 60
    while not list(tmp_path.glob("*/.randsae.lock")) or str(first.pid) not in list(tmp_path.glob("*/.randsae.lock"))[0].read_text():
        assert time.time() < deadline and first.poll() is None, "the first run never took its lock"
        time.sleep(0.2)
    second = run_cli(*args, outputs=tmp_path)
    assert second.returncode != 0 and f"is in use by another randsae run (pid {first.pid}" in second.stderr, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    kill(first)
    third = run_cli(*args, outputs=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock of" in third.stderr and f"(pid {first.pid}" in third.stderr
    assert not leftovers(tmp_path), leftovers(tmp_path)
