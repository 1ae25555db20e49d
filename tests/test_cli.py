"The randsae command rejects bad input with one clear line and exit status 2, before any work."
import pytest

from conftest import run_cli


@pytest.mark.parametrize("args, message", [
    (["reproduce", "--preset", "gpt5"], "unknown preset 'gpt5'"),
    (["reproduce", "--preset", "tiny", "--stages", "toy,finetune"], "unknown stage(s) ['finetune']"),
    (["reproduce", "--preset", "toy-paper", "--stages", "sae"], "unknown stage(s) ['sae'] for preset 'toy-paper'"),
    (["reproduce", "--set", "n_epochz=3"], "unknown parameter(s) ['n_epochz']"),
    (["reproduce", "--set", "n_epochs=many"], "parameter 'n_epochs' expects int"),
    (["reproduce", "--set", "l1_coefficients=0.1"], "parameter 'l1_coefficients' expects list"),
    (["reproduce", "--set", "oops"], "--set expects name=value"),
    (["reproduce", "--params", "/nonexistent/p.yaml"], "does not exist"),
    (["reproduce", "--preset", "pythia-70m", "--stages", "sae", "--set", "sae_n_tokens=200000000"],
     "sae_n_tokens=200000000 is more than the hub_n_tokens=100000000"),
])
def test_bad_input_fails_early(tmp_path, args, message):
    r = run_cli(*args, outputs=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before the checks pass"


def test_dry_run_plans_without_running(tmp_path):
    r = run_cli("reproduce", "--preset", "tiny", "--dry-run", "--set", "n_epochs=3", outputs=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "toy_superposition.ipynb" in r.stdout and "toy--n_epochs=3-" in r.stdout and "to run" in r.stdout
    assert not any(tmp_path.iterdir())


def test_presets_and_params_listing():
    r = run_cli("presets"); assert r.returncode == 0 and "tiny" in r.stdout and "toy-paper" in r.stdout
    r = run_cli("params", "--stages", "toy"); assert r.returncode == 0
    assert "l1_coefficients = " in r.stdout and "glove_dims = [50]" in r.stdout


def test_bad_params_file_content(tmp_path):
    p = tmp_path/"p.yaml"; p.write_text("- just\n- a list\n")
    r = run_cli("reproduce", "--params", p, outputs=tmp_path/"out")
    assert r.returncode == 2 and "must hold a mapping" in r.stderr
