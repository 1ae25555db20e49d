import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANDSAE = Path(sys.executable).parent/"randsae"

# Small enough to run both toy notebooks in seconds, real code paths throughout.
TINY_TOY = dict(n_seeds=2, n_samples=400, n_inputs=16, n_features=32, n_latents=64, mmcs_latent_counts=[32, 64],
                l1_coefficients=[0.01, 1.0], n_epochs=1, batch_size=64, lomax_n_samples=500,
                glove_n_words=600, glove_n_epochs=1, glove_l1_coefficients=[0.01, 1.0], glove_latent_multipliers=[2])


def run_cli(*args, outputs: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    "Run the installed `randsae` console script, with results under `outputs` (RANDSAE_OUTPUTS)."
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if outputs is not None: env["RANDSAE_OUTPUTS"] = str(outputs)
    env.setdefault("RANDSAE_LLM_CACHE", str(ROOT/"outputs"/"cache"/"llm"))   # SmolLM2 is fetched and converted once per checkout
    return subprocess.run([str(RANDSAE), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture
def params_file(tmp_path):
    import yaml
    def make(**extra):
        p = tmp_path/"params.yaml"; p.write_text(yaml.safe_dump({**TINY_TOY, **extra})); return p
    return make
