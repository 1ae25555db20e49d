"Real kills and real processes for randsae.saes / randsae.activations (proposed for tests/; each runs in seconds)."
import os, signal, subprocess, sys, time, textwrap
from pathlib import Path

import pytest
import torch

CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from randsae.saes import train_saes, SaeTrainConfig
    cfg = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0); lm = GPTNeoXForCausalLM(cfg).eval()
    toks = torch.randint(0, 64, (2000, 16), generator=torch.Generator().manual_seed(0))
    train_saes(lm, toks, [0, 1], sys.argv[1], "trained", SaeTrainConfig(4, 8, n_tokens=2000 * 16, batch_size=4, save_every=20), progress=False)
""")

def _train(out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    from randsae.saes import Sae, is_done
    proc = _train(tmp_path/"killed"); state = tmp_path/"killed"/"saes"/"seed0"/"trained"/".checkpoint"/"randsae_state.json"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline: time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed: use more tokens"
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not is_done(tmp_path/"killed"/"saes"/"seed0"/"trained"/"layers.1")
    for out in (tmp_path/"killed", tmp_path/"straight"):
        p = _train(out); _, err = p.communicate(timeout=300); assert p.returncode == 0, err.decode()[-2000:]
    for layer in (0, 1):
        a = Sae.load_from_disk(tmp_path/"killed"/"saes"/"seed0"/"trained"/f"layers.{layer}").state_dict()
        b = Sae.load_from_disk(tmp_path/"straight"/"saes"/"seed0"/"trained"/f"layers.{layer}").state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)

@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from randsae.saes import launch_distributed, train_saes, SaeTrainConfig, load_sae
    cfg = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0); lm = GPTNeoXForCausalLM(cfg).eval()
    toks = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    c = SaeTrainConfig(4, 8, n_tokens=1024, batch_size=4)
    d = launch_distributed(lm, toks, [0, 1], tmp_path, "dist", c)
    s = train_saes(lm, toks, [0, 1], tmp_path, "single", c, progress=False)
    for layer in (0, 1):
        torch.testing.assert_close(load_sae(d[layer]).W_dec, load_sae(s[layer]).W_dec, atol=1e-4, rtol=0)
