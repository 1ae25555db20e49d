"""Fuzzed input (hypothesis): the CLI's arguments, `--set` values, `--params` files and every public config's constructor.

Whatever a user types, the answer is either a run (here: a dry run) or one clean line, `randsae: error: ...`, naming the
parameter, with exit status 2, no traceback and nothing written under the outputs folder. `randsae.cli.main` runs in
process (no interpreter start per example); the examples are seeded (`derandomize=True`) and few, so the file stays fast.
"""
import contextlib, dataclasses, io, logging, math, os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from randsae.cli import main
from randsae.config import MAX_INT, MAX_SEED

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    "An outputs folder for the whole module (RANDSAE_OUTPUTS): it must stay empty."
    out = tmp_path_factory.mktemp("fuzz")/"outputs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANDSAE_OUTPUTS", str(out)); mp.setenv("HF_HUB_OFFLINE", "1")
        yield out


def run(*argv) -> tuple[int, str]:
    "Exit status and stderr of `randsae *argv`, in process (log records included, as the console script prints them)."
    err = io.StringIO(); root = logging.getLogger(); handler = logging.StreamHandler(err); level = root.level
    root.addHandler(handler); root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try: rc = main([str(a) for a in argv])
            except SystemExit as e: rc = e.code
    finally: root.removeHandler(handler); root.setLevel(level)
    return rc, err.getvalue()


def assert_clean(rc: int, err: str, outputs: Path, *names: str, may_pass: bool = False) -> None:
    "Exit status 2 and one `randsae: error:` line naming each of `names` (or, when `may_pass`, a clean 0); nothing written."
    assert not outputs.exists() or not any(outputs.iterdir()), f"something was written: {list(outputs.rglob('*'))}"
    if may_pass and rc == 0: assert err == "", err; return
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("randsae: error: "), err
    for n in names: assert n in lines[0], (n, err)


def shown(value) -> str:
    "How an int value appears in the error line (a huge one is abbreviated)."
    return str(value) if value.bit_length() <= 128 else "digits"


# ---- --set: values of the right type but out of range, NaN/inf, wrong types, huge ints -------------------------------

TOY_COUNTS = ["n_epochs", "n_seeds", "n_samples", "n_inputs", "n_features", "batch_size", "lomax_n_samples", "n_latents",
              "glove_n_words", "glove_n_epochs", "glove_batch_size"]

@FUZZ
@given(name=st.sampled_from(TOY_COUNTS), value=st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_INT + 1)))
def test_set_count_out_of_range(outputs, name, value):
    rc, err = run("reproduce", "--stages", "toy", "--dry-run", "--set", f"{name}={value}")
    assert_clean(rc, err, outputs, name, shown(value))


@FUZZ
@given(name=st.sampled_from(["seed", "n_seeds"]), value=st.integers(min_value=MAX_SEED + 1, max_value=10**40))
def test_set_seed_beyond_the_seed_range(outputs, name, value):
    rc, err = run("reproduce", "--stages", "toy", "--dry-run", "--set", f"{name}={value}")
    assert_clean(rc, err, outputs, "seed")


@FUZZ
@given(name=st.sampled_from(["avg_active", "lambda_decay", "subject_lr"]),
       text=st.sampled_from([".nan", ".inf", "-.inf", ".NaN", "-1.5", "-1e300", "1e999"]))
def test_set_float_not_finite_or_negative(outputs, name, text):
    rc, err = run("reproduce", "--stages", "toy,sae", "--dry-run", "--set", f"{name}={text}")
    assert_clean(rc, err, outputs, name)


BAD_NUMBER = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]), st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
                       st.text(max_size=4), st.booleans(), st.none())

@FUZZ
@given(good=st.lists(st.floats(0.001, 100), min_size=0, max_size=5), bad=BAD_NUMBER, at=st.integers(0, 5),
       name=st.sampled_from(["l1_coefficients", "glove_l1_coefficients", "embedding_l1_coefficients"]))
def test_params_file_bad_coefficient_in_a_list(outputs, tmp_path_factory, good, bad, at, name):
    coefs = good[:at] + [bad] + good[at:]
    f = tmp_path_factory.mktemp("p")/"p.yaml"; f.write_text(yaml.safe_dump({name: coefs}))
    rc, err = run("reproduce", "--stages", "toy,sae", "--dry-run", "--params", f)
    assert_clean(rc, err, outputs, name)


@FUZZ
@given(n=st.integers(10_001, 30_000))
def test_set_huge_list(outputs, n):
    rc, err = run("reproduce", "--stages", "toy", "--dry-run", "--set", f"l1_coefficients={[0.1] * n}")
    assert_clean(rc, err, outputs, "l1_coefficients", f"{n:,}")
    assert len(err) < 400   # the value is cut short in the message


@FUZZ
@given(name=st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(lambda s: not s.endswith("_")), value=st.integers(0, 9))
def test_set_unknown_name(outputs, name, value):
    from randsae.config import experiments_dir
    from randsae.runner import notebook_parameters
    known = {k for nb in experiments_dir().glob("*.ipynb") for k in notebook_parameters(nb)}
    rc, err = run("reproduce", "--dry-run", "--set", f"{name}={value}")
    if name in known: assert_clean(rc, err, outputs, name, may_pass=True)
    else: assert_clean(rc, err, outputs, f"unknown parameter(s) ['{name}']")


@FUZZ
@given(item=st.text(max_size=20).filter(lambda s: "=" not in s or not s.partition("=")[0].strip().isidentifier()))
def test_set_bad_syntax(outputs, item):
    rc, err = run("reproduce", "--dry-run", "--set", item)
    assert_clean(rc, err, outputs, "--set expects name=value")


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(["reproduce", "--preset", "--stages", "--set", "--params", "--dry-run", "--force",
                                                 "params", "presets", "bench", "toy,sae", "interp", "tiny", "-x", "--", ""]),
                               st.text(max_size=8)), max_size=5))
def test_arbitrary_arguments(outputs, argv):
    "Any argument list: a listing (0) or one clean error line (2), never a run (every reproduce here is a dry run), never a traceback."
    if "reproduce" in argv or "bench" in argv: argv = [*argv, "--dry-run"] if "reproduce" in argv and "bench" not in argv else ["bench", "nope"]
    rc, err = run(*argv)
    assert_clean(rc, err, outputs, may_pass=True)


# ---- --params files: bytes, YAML that is no mapping, any value for any parameter ----------------------------------------

@FUZZ
@given(data=st.one_of(st.binary(max_size=40), st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
                      st.sampled_from([b"\xff\xfe\x00a: 1", b"a: [1, 2", b"- a\n- b\n", b"just text", b"1: 2", b"{a: {b: [", b"!!python/object:os.system {}",
                                       b"a: &x [*x]", b"seed: " + b"9" * 5000, b"? [a]\n: 1"])))
def test_params_file_any_bytes(outputs, tmp_path_factory, data):
    f = tmp_path_factory.mktemp("p")/"p.yaml"; f.write_bytes(data)
    rc, err = run("reproduce", "--dry-run", "--params", f)
    assert_clean(rc, err, outputs, may_pass=True)


JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=6)),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)

def _all_params():
    from randsae.config import STAGES, experiments_dir
    from randsae.runner import notebook_parameters
    return sorted({k for s in STAGES.values() for nb in s.notebooks for k in notebook_parameters(experiments_dir()/nb) if not k.endswith("_dir")})

@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_params_file_any_value_for_any_parameter(outputs, tmp_path_factory, data):
    "Every parameter of every stage, given any YAML value: a dry run, or one line naming it."
    name = data.draw(st.sampled_from(_all_params()), label="name")
    value = data.draw(JSONISH, label="value")
    f = tmp_path_factory.mktemp("p")/"p.yaml"; f.write_text(yaml.safe_dump({name: value}))
    rc, err = run("reproduce", "--stages", "toy,sae,interp", "--dry-run", "--params", f)
    assert_clean(rc, err, outputs, name, may_pass=True)


# ---- every public config's constructor --------------------------------------------------------------------------------

def _configs():
    from randsae.dictionary import SweepConfig
    from randsae.latents import RecordConfig
    from randsae.saes import SaeTrainConfig
    from randsae.subjects import TinySubjectConfig
    return {SweepConfig: dict(n_latents=8, l1_coefficients=[0.1]), SaeTrainConfig: {}, RecordConfig: {}, TinySubjectConfig: {}}

BAD = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, MAX_INT + 1, 10**23, True, None, "", "x", [], [math.nan], b"\xff"]),
                st.integers(-10**30, 10**30), st.floats(), st.text(max_size=4), st.lists(st.floats(), max_size=3))

def _check_constructor(data, configs):
    cls = data.draw(st.sampled_from(list(configs)), label="config")
    field = data.draw(st.sampled_from([f.name for f in dataclasses.fields(cls)]), label="field")
    value = data.draw(BAD, label="value")
    try: cls(**{**configs[cls], field: value})
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert field in msg or any(f.name in msg for f in dataclasses.fields(cls)), (cls.__name__, field, value, msg)
        assert "\n" not in msg


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_config_constructors(data):
    "A bad value in any field of any public config: a ValueError or TypeError naming a field, never another exception."
    _check_constructor(data, _configs())


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_openai_client_constructor(data):
    from randsae.llm import OpenAIClient
    _check_constructor(data, {OpenAIClient: dict(model="m")})


def test_seed_range_fits_numpy_and_torch():
    "The largest allowed seed works in numpy and torch, also with the offsets the code adds."
    import numpy as np, torch
    np.random.seed(MAX_SEED); np.random.default_rng(MAX_SEED); torch.manual_seed(MAX_SEED * 1_000_003 + 99); torch.Generator().manual_seed(MAX_SEED + 2**32)
