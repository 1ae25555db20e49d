"The transformer pipeline end to end on a tiny subject, its table contract, and its early errors."
import json, time

import pandas as pd
import pytest
import torch

from conftest import run_cli
from test_faults import assert_same_tables, kill_at_random_points, leftovers, progress_timeline

TINY_SAE = ["--set", "subject_max_tokens=20000", "--set", "sae_n_tokens=8192", "--set", "heldout_max_tokens=2048",
            "--set", "sae_expansion_factor=4", "--set", "sae_k=8", "--set", "seeds=[0, 1]", "--set", "latent_cache_max_tokens=16384",
            "--set", "dead_check_max_tokens=4096"]
# The interp stage at tiny sizes, with the real local LLM (SmolLM2, computing in float32: 6x faster than the preset's bf16 on this
# CPU, the same code path) explaining and scoring one latent per SAE.
TINY_INTERP = ["--set", "n_latents=6", "--set", "window_len=16", "--set", "n_train=4", "--set", "n_test=4", "--set", "n_negative=4",
               "--set", "n_quantiles=2", "--set", "min_examples=8", "--set", "llm_latents_per_sae=1", "--set", "llm_n_train=4",
               "--set", "llm_n_test=2", "--set", "llm_n_negative=2", "--set", "llm_max_new_tokens=40", "--set", "llm_client=smollm2-f32",
               "--set", "cache_n_tokens=0"]
VARIANTS = ["trained", "rerandomized_incl_emb", "rerandomized_excl_emb", "step0", "control"]


ARGS = ["reproduce", "--preset", "tiny", "--stages", "sae,interp", "--no-progress", "--set", "vocab_size=512", "--set", "ctx_len=32",
        "--set", "subject_hidden_size=32", "--set", "subject_n_layers=2", "--set", "subject_intermediate_size=64",
        "--set", "subject_batch_size=16", "--set", "sae_batch_size=8", *TINY_SAE, *TINY_INTERP]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """One uninterrupted run of the sae and interp stages at tiny sizes, shared by the tests of this module: (outputs root, its
    progress timeline, taken before other tests add to the folder)."""
    root = tmp_path_factory.mktemp("pipeline")
    r = run_cli(*ARGS, outputs=root, timeout=1800)   # ~5 min idle; a loaded machine (two test workers and more) takes several times that
    assert r.returncode == 0, r.stderr[-3000:]
    return root, progress_timeline(root)


def test_sae_and_interp_stages_end_to_end(pipeline_run):
    "All five variants of a tiny subject get SAEs and metrics, then auto-interpretability tables and figures; a rerun skips everything."
    tmp_path, _ = pipeline_run; args = ARGS
    (out,) = [d for d in tmp_path.iterdir() if d.name.startswith("tiny--") and (d/"sae_pipeline.ipynb").exists()]
    table = pd.read_parquet(out/"tables"/"sae_metrics.parquet")
    assert {"variant", "layer", "explained_variance", "cosine_similarity", "l1_norm", "ce_loss_score"} <= set(table.columns)
    assert sorted(table.variant.unique()) == sorted(["trained", "rerandomized_incl_emb", "rerandomized_excl_emb", "step0", "control"])
    assert sorted(table.layer.unique()) == [0, 1] and sorted(table.seed.unique()) == [0, 1] and len(table) == 20   # 5 variants x 2 layers x 2 seeds
    assert table.explained_variance.between(-1, 1).all() and table.cosine_similarity.between(-1, 1).all()
    for v in table.variant.unique():
        for seed in (0, 1):
            for layer in (0, 1): assert (out/"saes"/f"seed{seed}"/v/f"layers.{layer}"/"sae.safetensors").exists()
    by_variant = pd.read_parquet(out/"tables"/"sae_metrics_by_variant.parquet")   # headline table: intervals over seeds
    assert {"explained_variance_lo", "explained_variance_hi", "dead_fraction_cache", "n"} <= set(by_variant.columns) and (by_variant.n == 2).all()
    assert (by_variant.explained_variance_lo <= by_variant.explained_variance).all() and (by_variant.dead_fraction_lo >= 0).all()
    opt = pd.read_parquet(out/"tables"/"sae_optimizer_comparison.parquet")   # the preset's signum comparison, first seed
    assert set(opt.optimizer) == {"adam", "signum"} and len(opt) == 10
    assert json.loads((out/"sae_pipeline_summary.json").read_text())["seeds"] == [0, 1]
    assert (out/"subject"/"step0"/"model.safetensors").exists() and any(f.name.startswith("fig03") for f in (out/"figures").iterdir())
    subject = json.loads((out/"subject"/"subject.json").read_text())
    assert subject["heldout_loss_final"] < subject["heldout_loss_step0"]

    # interp: its own folder (its parameters were overridden), reading the sae stage's
    (interp,) = [d for d in tmp_path.iterdir() if (d/"autointerp.ipynb").exists()]
    tables = {p.stem: p for p in (interp/"tables").glob("latent_auroc_*.parquet")}
    assert set(tables) == {"latent_auroc_token_null", "latent_auroc_SmolLM2-135M-Instruct-Q4_1-f32"}, tables
    for name, path in tables.items():   # the contract: one row per (variant, seed, layer, latent)
        t = pd.read_parquet(path)
        assert {"variant", "seed", "layer", "latent", "explainer", "auroc", "entropy", "compared"} <= set(t.columns)
        assert not t.duplicated(["variant", "seed", "layer", "latent"]).any() and t.explainer.nunique() == 1
        assert t.auroc.dropna().between(0, 1).all() and (t.entropy >= 0).all() and set(t.layer) <= {0, 1}
    null = pd.read_parquet(tables["latent_auroc_token_null"])
    assert set(null.variant) == set(VARIANTS), "the control always has examples; every variant is scored"
    seeds = json.loads((out/"sae_pipeline_summary.json").read_text())["seeds"]
    assert sorted(null.seed.unique()) == sorted(seeds), "every seed's SAEs are scored"
    cmp_n = null[null.compared].groupby(["seed", "layer"]).variant.value_counts().unstack()
    assert (cmp_n.nunique(axis=1) == 1).all(), "variants are compared on equal numbers of latents"
    usage = pd.read_parquet(interp/"tables"/"latent_usage.parquet")
    assert len(usage) == 5 * 2 * len(seeds) and (usage.dead + usage.alive == usage.num_latents).all() and (usage.used + usage.too_rare == usage.sampled).all()
    headline = pd.read_parquet(interp/"tables"/"autointerp_by_variant.parquet")
    for c in ("auroc_pooled", "auroc_latent_mean", "entropy"): assert {c, f"{c}_lo", f"{c}_hi"} <= set(headline.columns)
    assert (pd.read_parquet(interp/"tables"/"null_calibration_control.parquet").scorer.tolist() == ["detection", "fuzz"])
    llm = pd.read_parquet(tables["latent_auroc_SmolLM2-135M-Instruct-Q4_1-f32"])
    assert len(llm) <= 5 * 2 * len(seeds) and len(llm) >= 1 and (llm.n_pos_fuzz <= 2).all()
    expl = pd.read_parquet(interp/"tables"/"llm_explanations.parquet")
    assert len(expl) >= len(llm) and expl.explanation.notna().any()
    figs = {f.name for f in (interp/"figures").iterdir()}
    for stem in ("fig01_roc_fuzzing", "fig03_autointerp_entropy", "fig_entropy_auroc"): assert {f"{stem}.png", f"{stem}.svg", f"{stem}.html"} <= figs
    assert "<span title=" in (interp/"figures"/"feature_cards.html").read_text()
    summary = json.loads((interp/"autointerp_summary.json").read_text())
    assert summary["llm"]["failures"] == 0 and summary["llm"]["misses"] + summary["llm"]["hits"] > 0
    assert summary["seeds"] == seeds and summary["sentences"] and any("calibration on the control" in s for s in summary["sentences"])
    executed = interp/"autointerp.ipynb"; mtime = executed.stat().st_mtime
    r2 = run_cli(*args, outputs=tmp_path, timeout=300)
    assert r2.returncode == 0 and r2.stderr.count("skip") >= 2 and executed.stat().st_mtime == mtime, r2.stderr[-2000:]

    # An unreachable LLM server fails before any record is built, naming its URL.
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    r3 = run_cli(*args, "--set", "llm_client=openai", "--set", "llm_model=m", "--set", f"llm_base_url=http://127.0.0.1:{port}", outputs=tmp_path, timeout=300)
    assert r3.returncode != 0 and f"cannot reach the LLM server at http://127.0.0.1:{port}" in r3.stderr, r3.stderr[-2000:]
    (failed,) = [d for d in tmp_path.iterdir() if (d/"autointerp.failed.ipynb").exists()]
    assert failed != interp and not (failed/"records").exists()


def test_sae_and_interp_killed_anywhere_resume_to_the_same_tables(pipeline_run, tmp_path):
    "SIGKILLed at seeded random points (subject training, SAE training, evaluation, records, LLM scoring), the rerun ends with the same tables."
    ref, timeline = pipeline_run
    points = kill_at_random_points(ARGS, tmp_path, timeline, n_kills=3, seed=9)
    r = run_cli(*ARGS, outputs=tmp_path, timeout=900)
    assert r.returncode == 0, (points, r.stderr[-3000:])
    outs = [d for d in tmp_path.iterdir() if (d/"tables").is_dir()]
    assert len(outs) == 2, outs   # the sae stage's folder and the interp stage's
    for out in outs: assert_same_tables(out, ref/out.name)
    assert not leftovers(tmp_path), leftovers(tmp_path)

    # A product of the sae stage that the interp stage reads, damaged: the next run says so naming the file, reruns the sae stage
    # (which remakes the token set and reuses its intact SAEs and subject), and ends with the same tables.
    (chunks,) = tmp_path.glob("*/tokens/latent_cache/chunks.npy")
    b = bytearray(chunks.read_bytes()); b[len(b) // 2] ^= 0xFF; chunks.write_bytes(bytes(b))
    alone = run_cli(*[a if a != "sae,interp" else "interp" for a in ARGS], outputs=tmp_path, timeout=300)
    assert alone.returncode == 2 and "chunks.npy does not match the sha256" in alone.stderr and "--stages sae,interp" in alone.stderr, alone.stderr[-2000:]
    saes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/saes/**/sae.safetensors")}
    r = run_cli(*ARGS, outputs=tmp_path, timeout=900)
    assert r.returncode == 0 and "chunks.npy does not match the sha256" in r.stderr, r.stderr[-3000:]
    assert saes and all(p.stat().st_mtime_ns == t for p, t in saes.items()), "intact SAEs are reused, not retrained"
    for out in outs: assert_same_tables(out, ref/out.name)


def test_interp_alone_needs_the_sae_stage(tmp_path):
    r = run_cli("reproduce", "--preset", "tiny", "--stages", "interp", "--no-progress", outputs=tmp_path, timeout=120)
    assert r.returncode == 2 and "need stage 'sae', whose results are missing" in r.stderr and "--stages sae,interp" in r.stderr, r.stderr
    assert not any(tmp_path.iterdir()), "nothing runs"


@pytest.mark.parametrize("args, message", [
    (["--set", "variants=['trained', 'finetuned']"], "variants[1] must be one of"),
    (["--set", "layers=[7]"], "layers[0] must be an integer in [0, 3], got 7"),
    (["--set", "sae_k=4096"], "sae_k=4096 must be less than the number of latents"),
    (["--set", "sae_expansion_factor=0"], "sae_expansion_factor must be a positive integer, got 0"),
    (["--set", "sae_n_tokens=100"], "less than one SAE batch"),
])
def test_bad_sae_parameters_fail_before_heavy_work(tmp_path, args, message):
    "The runner constructs the stage's configs from the resolved parameters before the notebook starts: one line, no folder."
    r = run_cli("reproduce", "--preset", "tiny", "--stages", "sae", "--no-progress", *args, outputs=tmp_path, timeout=300)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr[-2000:]
    assert not any(tmp_path.iterdir()), "nothing may be written before the checks pass"


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


def test_models_stage_compares_every_run_and_reruns_when_one_changes(pipeline_run):
    "The models stage finds the sae run and the interp run that read it, tests each claim, and reruns only when an input table changes."
    root, _ = pipeline_run
    args = ["reproduce", "--preset", "tiny", "--stages", "models", "--no-progress"]
    r = run_cli(*args, outputs=root, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    claims = pd.read_parquet(root/"models"/"tables"/"claims_by_model.parquet")
    assert claims.model.nunique() == 1 and set(claims.claim) == {"auroc", "reconstruction", "abstraction", "norms", "control_chance"}
    assert set(claims.verdict) <= {"holds", "partly", "does not hold", "no data"}
    assert (claims[claims.claim != "abstraction"].verdict != "no data").all(), claims   # every table was found
    assert {f"fig03_by_model.{e}" for e in ("png", "svg", "html")} <= {f.name for f in (root/"models"/"figures").iterdir()}
    executed = root/"models"/"models.ipynb"; mtime = executed.stat().st_mtime_ns
    assert run_cli(*args, outputs=root, timeout=300).returncode == 0 and executed.stat().st_mtime_ns == mtime, "unchanged inputs: skipped"
    (table,) = [p for p in root.glob("*/tables/sae_metrics_by_variant.parquet")]
    original = table.read_bytes(); df = pd.read_parquet(table); df.loc[0, "explained_variance"] += 1e-3; df.to_parquet(table, index=False)
    try: assert run_cli(*args, outputs=root, timeout=300).returncode == 0 and executed.stat().st_mtime_ns != mtime, "a changed input: rerun"
    finally: table.write_bytes(original)   # the fixture's run is shared with the other tests


LAYER_SUPERPOSITION = ["reproduce", "--preset", "tiny", "--stages", "superposition_layers", "--no-progress",
                       *ARGS[6:-len(TINY_INTERP)], "--set", "n_reps=3", "--set", "n_tokens=600", "--set", "n_epochs=15",
                       "--set", "batch_size=32"]


def test_superposition_layers_stage_on_the_sae_stage_subject(pipeline_run):
    """The residual stream's superposed-vs-Gaussian gap at the input and each block of every variant: tables, figures and a verdict per
    variant; the instrument check holds (the control's input is IID noise: gap 1); a rerun skips it."""
    root, _ = pipeline_run
    r = run_cli(*LAYER_SUPERPOSITION, outputs=root, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (summary_path,) = root.glob("tiny--*/layer_superposition_summary.json"); out = summary_path.parent
    summary = json.loads(summary_path.read_text())
    assert set(summary["verdict"]) == set(VARIANTS) and set(summary["verdict"].values()) <= {"preserve", "amplify", "wash-out", "mixed", "no interval"}
    gap = pd.read_parquet(out/"tables"/"layer_superposition_gap.parquet")
    assert set(gap.layer) == {-1, 0, 1} and set(gap.variant) == set(VARIANTS) and (gap.n <= 3).all()
    ctrl = gap[(gap.variant == "control") & (gap.layer == -1) & (gap.explained_variance == 0.75) & gap.measure.isin(["l0", "l1_over_sqrt_l2"])]
    assert len(ctrl) == 2 and ((ctrl.gap - 1).abs() < 0.1).all(), ctrl   # the known answer: noise is as sparse as its Gaussian control
    assert summary["sentences"][0].startswith("**Instrument check**")
    assert {f"layer_superposition_{n}.{e}" for n in ("gap", "l0") for e in ("png", "svg", "vl.json")} <= {f.name for f in (out/"figures").iterdir()}
    executed = out/"layer_superposition.ipynb"; mtime = executed.stat().st_mtime_ns
    assert run_cli(*LAYER_SUPERPOSITION, outputs=root, timeout=300).returncode == 0 and executed.stat().st_mtime_ns == mtime, "unchanged: skipped"


# only the battery's own parameters: one the interp notebook shares (n_bootstrap) would send the interp stage to another folder
BATTERY = ["reproduce", "--preset", "tiny", "--stages", "battery", "--no-progress", *ARGS[6:], "--set", "context_max_windows=2",
           "--set", "context_max_latents=3", "--set", "kl_n_chunks=2", "--set", "kl_batch_size=2"]


def test_battery_stage_on_the_interp_stage_records(pipeline_run):
    """The battery stage end to end on the fixture's interp records: per-latent metrics in range, a slope and verdict per (metric,
    variant), the null model's matched and shuffled AUROCs, the LLM's own / shuffled / token-list scores with the real local LLM, KL and
    CE scores, the simulator's cost from a timed call (never NaN); a rerun skips it."""
    root, _ = pipeline_run
    r = run_cli(*BATTERY, outputs=root, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (summary_path,) = root.glob("tiny--*/battery_summary.json"); out = summary_path.parent
    summary = json.loads(summary_path.read_text())
    lat = pd.read_parquet(out/"tables"/"battery_latents.parquet")
    assert set(lat.variant) == set(VARIANTS) and set(lat.layer) == {0, 1} and set(lat.seed) == {0, 1}
    for c in ("token_r2", "prev_token_r2", "bigram_r2", "position_r2"):   # adjusted R²: at most 1, below 0 where a key explains nothing
        assert (lat[c].dropna() <= 1 + 1e-6).all() and lat[c].notna().any(), c
    assert lat.top_token_share.dropna().between(0, 1 + 1e-6).all() and set(lat.single_token.dropna()) <= {0, 1, False, True}
    assert lat.context_sensitivity.notna().sum() <= 3 * 20 and lat.context_sensitivity.notna().any()   # context_max_latents per SAE
    slopes = pd.read_parquet(out/"tables"/"battery_slopes.parquet")
    assert set(slopes.variant) == set(VARIANTS) and set(slopes.verdict) <= {"supported", "not supported", "no prediction"}
    null_gap = pd.read_parquet(out/"tables"/"battery_null_shuffled_gap.parquet")
    assert set(null_gap.variant) == set(VARIANTS) and null_gap.auroc_shuffled.between(0, 1).all()
    llm = pd.read_parquet(out/"tables"/"battery_llm_scores.parquet")
    assert set(llm.explainer) == {"own", "shuffled", "token_list"}
    kl = pd.read_parquet(out/"tables"/"battery_kl_ce.parquet")
    assert len(kl) == 16 and set(kl.variant) == set(VARIANTS) - {"control"} and (kl.kl_sae >= -1e-6).all() and kl.ce_clean.notna().all()   # the control: no tokens
    cost = summary["llm_simulator_cost"]
    assert 0 < cost["n_llm_latents"] <= 20 and "nan" not in cost["sentence"] and not any(" nan " in s for s in summary["sentences"]), cost
    timed = cost["seconds_per_prompt"] > 0   # a cold LLM cache times the calls; a warm one (a rerun of the tests) has none to time
    assert timed == (cost["seconds_per_prompt_source"] != "no LLM call timed") and (timed or "came from the cache" in cost["sentence"]), cost
    assert any(s.startswith("**") for s in summary["sentences"])
    executed = out/"battery.ipynb"; mtime = executed.stat().st_mtime_ns
    assert run_cli(*BATTERY, outputs=root, timeout=300).returncode == 0 and executed.stat().st_mtime_ns == mtime, "unchanged: skipped"
