"The transformer pipeline end to end on a tiny subject, its table contract, and its early errors."
import json

import pandas as pd
import pytest
import torch

from conftest import run_cli

TINY_SAE = ["--set", "subject_max_tokens=20000", "--set", "sae_n_tokens=8192", "--set", "heldout_max_tokens=2048",
            "--set", "sae_expansion_factor=4", "--set", "sae_k=8"]


def test_sae_stage_end_to_end(tmp_path):
    "All five variants of a tiny subject get SAEs and metrics; a rerun skips everything."
    r = run_cli("reproduce", "--preset", "tiny", "--stages", "sae", "--no-progress", "--set", "vocab_size=512", "--set", "ctx_len=32",
                "--set", "subject_hidden_size=32", "--set", "subject_n_layers=2", "--set", "subject_intermediate_size=64",
                "--set", "subject_batch_size=16", "--set", "sae_batch_size=8", *TINY_SAE, outputs=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (out,) = [d for d in tmp_path.iterdir() if d.name.startswith("tiny--")]
    table = pd.read_parquet(out/"tables"/"sae_metrics.parquet")
    assert {"variant", "layer", "explained_variance", "cosine_similarity", "l1_norm", "ce_loss_score"} <= set(table.columns)
    assert sorted(table.variant.unique()) == sorted(["trained", "rerandomized_incl_emb", "rerandomized_excl_emb", "step0", "control"])
    assert sorted(table.layer.unique()) == [0, 1] and len(table) == 10
    assert table.explained_variance.between(-1, 1).all() and table.cosine_similarity.between(-1, 1).all()
    for v in table.variant.unique():
        for layer in (0, 1): assert (out/"saes"/v/f"layers.{layer}"/"sae.safetensors").exists()
    assert (out/"subject"/"step0"/"model.safetensors").exists() and any(f.name.startswith("fig03") for f in (out/"figures").iterdir())
    subject = json.loads((out/"subject"/"subject.json").read_text())
    assert subject["heldout_loss_final"] < subject["heldout_loss_step0"]


@pytest.mark.parametrize("args, message", [
    (["--set", "variants=['trained', 'finetuned']"], "variant must be one of"),
    (["--set", "layers=[7]"], "layers [7] out of range"),
    (["--set", "sae_k=4096"], "must be less than the number of latents"),
    (["--set", "sae_expansion_factor=0"], "expansion_factor"),
    (["--set", "sae_n_tokens=100"], "less than one SAE batch"),
])
def test_bad_sae_parameters_fail_before_heavy_work(tmp_path, args, message):
    r = run_cli("reproduce", "--preset", "tiny", "--stages", "sae", "--no-progress", *args, outputs=tmp_path, timeout=300)
    assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]
    (out,) = list(tmp_path.iterdir())
    assert not (out/"subject").exists(), "the checks must come before the subject is trained"
    assert (out/"sae_pipeline.failed.ipynb").exists()


def test_variant_contract():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from randsae.variants import VARIANTS, rerandomize, gaussian_embedding_control
    assert VARIANTS == ("trained", "rerandomized_incl_emb", "rerandomized_excl_emb", "step0", "control")
    cfg = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0); model = GPTNeoXForCausalLM(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = rerandomize(model, include_embeddings=False, seed=1)
    assert new is not model and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(new.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert not torch.equal(new.gpt_neox.layers[0].attention.dense.weight, model.gpt_neox.layers[0].attention.dense.weight)
    ctrl = gaussian_embedding_control(model, seed=0)
    ids = torch.tensor([[5, 7, 5]])
    h = ctrl(input_ids=ids, output_hidden_states=True).hidden_states[0]
    assert not torch.allclose(h[0, 0], h[0, 2])    # the same token gets different vectors
    h0 = model(input_ids=ids, output_hidden_states=True).hidden_states[0]
    assert torch.equal(h0[0, 0], h0[0, 2])
