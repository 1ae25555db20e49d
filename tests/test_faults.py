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


def progress_timeline(reference: Path) -> list[tuple[float, Path]]:
    "The files an uninterrupted run left under `reference`, as (seconds after its first file, relative path), oldest first."
    left = set(leftovers(reference))
    files = sorted((p.stat().st_mtime, p.relative_to(reference)) for p in reference.rglob("*") if p.is_file() and p not in left)
    return [(t - files[0][0], rel) for t, rel in files]


def kill_at_random_points(args, outputs: Path, timeline: list[tuple[float, Path]], n_kills: int, seed: int, timeout: float = 1800) -> list[Path]:
    """Run `randsae *args` and SIGKILL it at `n_kills` seeded random points of its progress; return the files each kill followed.

    A point is a file of an uninterrupted reference run's `timeline` (`progress_timeline`, taken right after it ended) (drawn from the middle 80% of its timeline) plus a seeded share of
    the time to the reference's next file: the run is killed once every file the reference had written by then exists, and
    that share of the gap later. Progress, not wall seconds, because a reference run pays one-off costs (a cold LLM
    conversion, caches) that its reruns do not, and the machine's load changes every run's speed. Each rerun resumes; a
    rerun that finishes first ends the series. The last kill spares the kernel (only the runner dies) to check that an
    orphaned kernel writes nothing stale."""
    rng = np.random.default_rng(seed)
    lo, hi = int(0.1 * len(timeline)), max(int(0.1 * len(timeline)) + n_kills, int(0.9 * len(timeline)))
    idx = sorted(rng.choice(np.arange(lo, min(hi, len(timeline) - 1)), size=n_kills, replace=False).tolist())
    killed = []
    for i, j in enumerate(idx):
        (t, rel), t_next = timeline[j], timeline[j + 1][0]
        wanted = [r for _, r in timeline[:j + 1]]
        proc = start_cli(*args, outputs=outputs); deadline = time.monotonic() + timeout
        while proc.poll() is None and not all((outputs/r).exists() for r in wanted):
            assert time.monotonic() < deadline, f"the run never reached {rel} within {timeout} s"
            time.sleep(0.2)
        if proc.poll() is None: time.sleep(float(rng.uniform(0, 0.9)) * (t_next - t))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()[-2000:]
            break
        kill(proc, whole_tree=i < n_kills - 1); killed.append(rel)
    assert killed, "no run was killed"
    return killed


@pytest.fixture(scope="module")
def toy_reference(tmp_path_factory):
    "The toy stage run once, uninterrupted, at test sizes: (args, outputs root, its progress timeline)."
    root = tmp_path_factory.mktemp("toy_ref"); p = root/"params.yaml"; p.write_text(yaml.safe_dump(TINY_TOY))
    args = ["reproduce", "--preset", "tiny", "--stages", "toy", "--params", p, "--no-progress"]
    ref = run_cli(*args, outputs=root/"out")
    assert ref.returncode == 0, ref.stderr[-3000:]
    return args, root/"out", progress_timeline(root/"out")


def test_toy_stage_killed_anywhere_resumes_to_the_same_tables(toy_reference, tmp_path):
    args, ref, timeline = toy_reference
    points = kill_at_random_points(args, tmp_path, timeline, n_kills=3, seed=14)
    r = run_cli(*args, outputs=tmp_path)
    assert r.returncode == 0, (points, r.stderr[-3000:])
    assert_same_tables(tmp_path, ref)
    assert not leftovers(tmp_path), leftovers(tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    "A tmpfs mounted at a fresh folder (root only), unmounted afterwards; yields a function that resizes it in MB."
    if os.geteuid() != 0: pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path/"disk"; mnt.mkdir()
    def mount(mb: float, remount: bool = False):
        opts = f"{'remount,' if remount else ''}size={int(mb * 2**20)}"
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode: pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    mount.path = mnt
    yield mount
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_fails_clearly_keeps_finished_work_and_resumes(toy_reference, small_disk):
    args, ref, _ = toy_reference
    ref_mb = sum(f.stat().st_size for f in ref.rglob("*") if f.is_file()) / 2**20
    small_disk(0.6 * ref_mb); disk = small_disk.path               # fills up midway through the stage
    r = run_cli(*args, outputs=disk)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = [l for l in r.stderr.splitlines() if l.startswith("randsae: error:")]
    (out,) = [d for d in disk.iterdir()]
    assert f"no space left on the device of {out}" in line and "MB free" in line and "needs more than" in line, line
    assert not leftovers(disk), leftovers(disk)                       # no torn temporary, no torn .failed notebook
    for marker in (out/".done").glob("*.json"): assert (out/f"{marker.stem}.ipynb").exists()
    want = tables(ref)
    for name, df in tables(disk).items(): pd.testing.assert_frame_equal(df, want[name], obj=name)   # what is there is whole

    small_disk(2 * ref_mb + 4, remount=True)                         # space is freed: the rerun completes
    r = run_cli(*args, outputs=disk)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_tables(disk, ref)


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


def test_other_seed_other_tables(toy_reference, tmp_path):
    """Same seed, same tables: bit-identical, shown by the kill test above (a killed and resumed run equals an uninterrupted one).
    Another seed must change the tables of sampled quantities (sweeps, gaps per seed, MMCS); summaries of verdicts may agree."""
    args, ref, _ = toy_reference
    r = run_cli(*args, "--set", "seed=1", outputs=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    strip = lambda d: {name.split("/", 1)[1]: df for name, df in d.items()}   # drop the run folder's name (it holds the seed)
    a, b = strip(tables(tmp_path)), strip(tables(ref))
    assert sorted(a) == sorted(b)
    same = sorted(n for n in a if a[n].equals(b[n]))
    for name in ("tables/toy_sweep_metrics.parquet", "tables/glove_sweep_metrics.parquet", "tables/toy_gap_per_seed.parquet", "tables/fig05_mmcs.parquet"):
        assert name not in same, f"{name} did not change with the seed"
