"""The Pythia presets' hub code path, offline. A Hugging Face cache laid out as the hub leaves it holds a tiny GPTNeoX as
`EleutherAI/pythia-70m-deduped` at the revisions `main` and `step0` (different weights) and a small local JSONL prepared as
`EleutherAI/rpj-v2-sample`; `randsae reproduce --preset pythia-70m --stages sae,interp` runs on it end to end at a tiny size
with HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1 and every outbound connection refused (and recorded) in every process."""
import json, os, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, run_cli

PYTHIA = "EleutherAI/pythia-70m-deduped"
N_LAYERS = 6                      # pythia-70m's depth: the preset's layer schedule (every layer) applies as is
VARIANTS = ["trained", "rerandomized_incl_emb", "rerandomized_excl_emb", "step0", "control"]

# Every size parameter of the preset, made tiny (the preset's own: ctx_len 2048, 100M tokens, R=64, k=32, 10M cache tokens).
TINY_PYTHIA = ["reproduce", "--preset", "pythia-70m", "--stages", "sae,interp", "--no-progress",
               "--set", "ctx_len=32", "--set", "hub_n_tokens=6144", "--set", "sae_n_tokens=6144", "--set", "sae_batch_size=8",
               "--set", "sae_expansion_factor=4", "--set", "sae_k=8", "--set", "seeds=[0]", "--set", "heldout_max_tokens=1024",
               "--set", "latent_cache_max_tokens=8192", "--set", "dead_check_max_tokens=2048",
               "--set", "embedding_latent_multiplier=2", "--set", "embedding_n_epochs=1", "--set", "embedding_l1_coefficients=[0.01, 1.0]",
               # interp: the preset's LLM is vLLM on a GPU; here the token-identity null model only
               "--set", "n_latents=6", "--set", "window_len=16", "--set", "n_train=4", "--set", "n_test=4", "--set", "n_negative=4",
               "--set", "n_quantiles=2", "--set", "min_examples=8", "--set", "cache_n_tokens=0", "--set", "n_bootstrap=50",
               "--set", "llm_client=none", "--set", "llm_latents_per_sae=1"]

WORDS = ("the a of to and in is was for on that with as by at from his her it an be this are which were had have not but "
         "river city market council music team season report bank price water house school road court garden letter station "
         "morning evening winter summer north south old new small large early late open closed quiet busy bright dark "
         "said built opened sold wrote found moved played carried crossed signed raised lowered painted counted").split()

# Imported before anything else in every Python process of the run (the CLI, papermill's kernels): refuses and records
# every connection that does not stay on this machine, and records that it was loaded.
GUARD = '''
import os, socket
_LOG = os.environ["RANDSAE_NET_LOG"]
def _note(name, line):
    with open(os.path.join(_LOG, name), "a") as f: f.write(f"{os.getpid()} {line}\\n")
def _local(host):
    return not isinstance(host, str) or host in ("", "localhost", "::1", "0.0.0.0") or host.startswith("127.")
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
def connect(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        _note("blocked.log", f"connect {address!r}"); raise OSError(f"outbound connection refused by the test: {address!r}")
    return _connect(self, address)
def connect_ex(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        _note("blocked.log", f"connect_ex {address!r}"); return 111
    return _connect_ex(self, address)
def getaddrinfo(host, *args, **kwargs):
    if not _local(host.decode() if isinstance(host, bytes) else host):
        _note("blocked.log", f"getaddrinfo {host!r}"); raise socket.gaierror(f"name lookup refused by the test: {host!r}")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
_note("loaded.log", " ".join(__import__("sys").argv)[:200])
'''


def standin_texts(n_docs: int = 400, seed: int = 0) -> list[str]:
    "Seeded English-like documents (Zipf-distributed words in sentences): the stand-in for RedPajama's `raw_content`."
    rng = np.random.default_rng(seed); p = 1 / np.arange(1, len(WORDS) + 1); p /= p.sum(); docs = []
    for _ in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS, size=rng.integers(5, 14), p=p)).capitalize() + "." for _ in range(rng.integers(3, 8))]
        docs.append(" ".join(sentences))
    return docs


def standin_tokenizer(texts: list[str], folder: Path):
    "A byte-level BPE tokenizer saved as Pythia's are: tokenizer.json, tokenizer_config.json (GPTNeoXTokenizer), special tokens at ids 0 and 1."
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE()); tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel(); tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|padding|>"], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(folder)
    cfg = json.loads((folder/"tokenizer_config.json").read_text()); cfg["tokenizer_class"] = "GPTNeoXTokenizer"   # as Pythia's
    (folder/"tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return fast


def standin_model(seed: int):
    "A GPTNeoX shaped like pythia-70m (6 blocks, untied embeddings, a vocabulary padded beyond the tokenizer's) but 32 wide, fp16 as on the hub."
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    config = GPTNeoXConfig(vocab_size=512, hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=4, intermediate_size=128,
                           max_position_embeddings=2048, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config).half()


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    "HF_HOME with the stand-in Pythia (revisions main and step0) in hub/ and the stand-in RedPajama sample in datasets/."
    from randsae.corpus import REDPAJAMA_SAMPLE, REDPAJAMA_TEXT_FIELD, cache_hub_dataset
    from randsae.subjects import save_hub_snapshot
    root = tmp_path_factory.mktemp("hf_home"); work = tmp_path_factory.mktemp("standin")
    texts = standin_texts()
    jsonl = work/"rpj-v2-sample.jsonl"
    jsonl.write_text("".join(json.dumps({REDPAJAMA_TEXT_FIELD: t, "doc_id": f"standin/{i}", "meta": "{}"}) + "\n" for i, t in enumerate(texts)))
    for revision, seed in [("step0", 0), ("main", 1)]:
        folder = work/revision; standin_model(seed).save_pretrained(folder); standin_tokenizer(texts, folder)
        save_hub_snapshot(folder, PYTHIA, revision, cache_dir=root/"hub")
    cache_hub_dataset(jsonl, REDPAJAMA_SAMPLE, cache_dir=root/"datasets")
    return root


def offline_env(hf_home: Path, net_log: Path) -> dict:
    "The environment of an offline run on the stand-in cache, with the connection guard imported by every Python process."
    guard = net_log/"guard"; guard.mkdir(parents=True, exist_ok=True); (guard/"sitecustomize.py").write_text(GUARD)
    return {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home/"hub"), "HF_DATASETS_CACHE": str(hf_home/"datasets"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RANDSAE_NET_LOG": str(net_log),
            "PYTHONPATH": os.pathsep.join([str(guard), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_hub_cache_layout_and_revisions(hf_home):
    "refs/<revision> holds a commit sha whose snapshot links into blobs/; step0 and main load the weights saved for each, which differ."
    from randsae.subjects import load_checkpoint
    repo = hf_home/"hub"/"models--EleutherAI--pythia-70m-deduped"
    shas = {r: (repo/"refs"/r).read_text() for r in ("main", "step0")}
    assert all(len(s) == 40 for s in shas.values()) and shas["main"] != shas["step0"]
    for sha in shas.values():
        snap = repo/"snapshots"/sha
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in snap.iterdir()}
        assert (snap/"model.safetensors").is_symlink() and (snap/"model.safetensors").resolve().parent == (repo/"blobs").resolve()
    kw = dict(cache_dir=hf_home/"hub", local_files_only=True)
    main, step0 = load_checkpoint(PYTHIA, **kw), load_checkpoint(PYTHIA, revision="step0", **kw)
    for model, seed in [(step0, 0), (main, 1)]:   # each revision is the checkpoint saved for it (fp16 on disk, float32 loaded)
        want = standin_model(seed).float().state_dict()
        got = model.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want if not k.endswith("masked_bias")), seed
    assert not torch.equal(main.gpt_neox.embed_in.weight, step0.gpt_neox.embed_in.weight)
    assert not torch.equal(main.gpt_neox.layers[3].mlp.dense_h_to_4h.weight, step0.gpt_neox.layers[3].mlp.dense_h_to_4h.weight)
    with pytest.raises(OSError, match="revision 'step1'"):   # a revision that is not in the cache: a clear error, no download
        load_checkpoint(PYTHIA, revision="step1", **kw)


def test_pythia_preset_end_to_end_offline(hf_home, tmp_path, monkeypatch):
    "The sae and interp stages of the pythia-70m preset on the stand-in cache: tables, SAEs, the step0 variant on its own checkpoint, no network."
    net_log = tmp_path/"net"; env = offline_env(hf_home, net_log)
    # the guard works: a connection to the hub from a process started like the run's is refused and recorded
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('huggingface.co', 443), timeout=5)"],
                           env=dict(os.environ, **env), capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "huggingface.co" in (net_log/"blocked.log").read_text(), probe.stderr[-1000:]
    (net_log/"blocked.log").unlink(); (net_log/"loaded.log").unlink()

    outputs = tmp_path/"outputs"; t0 = time.perf_counter()
    for k, v in env.items(): monkeypatch.setenv(k, v)   # run_cli passes os.environ on
    r = run_cli(*TINY_PYTHIA, outputs=outputs, timeout=600)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-4000:]
    assert not (net_log/"blocked.log").exists(), (net_log/"blocked.log").read_text()
    loaded = (net_log/"loaded.log").read_text().splitlines()
    assert sum("HistoryManager" in l for l in loaded) == 2 and any("randsae reproduce" in l for l in loaded), loaded   # the CLI and both kernels

    (sae,) = [d for d in outputs.iterdir() if (d/"sae_pipeline.ipynb").exists()]
    (interp,) = [d for d in outputs.iterdir() if (d/"autointerp.ipynb").exists()]
    assert sae.name.startswith("pythia-70m") and interp.name.startswith("pythia-70m")
    summary = json.loads((sae/"sae_pipeline_summary.json").read_text())
    assert summary["subject"] == "pythia-70m" and summary["layers"] == list(range(N_LAYERS)) and summary["seeds"] == [0]
    m = pd.read_parquet(sae/"tables"/"sae_metrics.parquet")
    assert sorted(m.variant.unique()) == sorted(VARIANTS) and len(m) == len(VARIANTS) * N_LAYERS
    assert m.explained_variance.between(-1, 1).all() and m.loc[m.variant == "trained", "ce_loss_score"].notna().all()
    for v in VARIANTS:
        for layer in range(N_LAYERS): assert (sae/"saes"/"seed0"/v/f"layers.{layer}"/"sae.safetensors").exists()
    by = m.set_index(["variant", "layer"])
    for col in ("explained_variance", "l1_norm"):   # step0 trained its SAEs on another model than trained did
        assert not np.allclose(by.loc["step0", col].to_numpy(), by.loc["trained", col].to_numpy()), col
    for t in ("sae_metrics_by_layer", "sae_metrics_by_variant", "embedding_pareto"): assert (sae/"tables"/f"{t}.parquet").exists(), t

    # the token sets came from the stand-in dataset through the stand-in tokenizer
    from randsae.corpus import load_token_set
    tok, chunks, _ = load_token_set(sae/"tokens"/"heldout")
    assert tuple(chunks.shape) == (1024 // 32, 32) and len(tok) == 400 and int(chunks.max()) < 400
    text = tok.decode(chunks[0].tolist())
    assert sum(w in text.split() for w in ("the", "of", "river", "market", "city")) >= 1, text

    null = pd.read_parquet(interp/"tables"/"latent_auroc_token_null.parquet")
    assert set(null.variant) == set(VARIANTS) and set(null.layer) <= set(range(N_LAYERS)) and null.auroc.dropna().between(0, 1).all()
    assert not list((interp/"tables").glob("latent_auroc_*Llama*"))
    for t in ("latent_usage", "autointerp_by_variant", "entropy_by_layer"): assert (interp/"tables"/f"{t}.parquet").exists(), t
    # the RedPajama token cache names its data: the dataset and the first document of the shuffled stream it read
    (man,) = (outputs/"cache"/"corpus"/"hub").glob("*/tokens.json")
    key = json.loads(man.read_text())["key"]
    assert key["dataset"] == "EleutherAI/rpj-v2-sample" and len(key["first_document_sha256"]) == 64

    # a rerun, still offline, finds both stages done and skips them
    executed = interp/"autointerp.ipynb"; mtime = executed.stat().st_mtime_ns
    r2 = run_cli(*TINY_PYTHIA, outputs=outputs, timeout=300)
    assert r2.returncode == 0 and r2.stderr.count("skip") >= 2 and executed.stat().st_mtime_ns == mtime, r2.stderr[-2000:]
    assert not (net_log/"blocked.log").exists(), (net_log/"blocked.log").read_text()
    print(f"pythia-70m stand-in, sae + interp stages offline: {seconds:.0f} s")
