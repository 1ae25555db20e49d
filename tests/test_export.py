"randsae export-saes: tiny SAEs trained with sparsify, exported in SAELens's format, loaded by SAELens itself (a dev dependency), reconstruct as randsae's SAEs do."
import contextlib, io, json

import pytest
import torch

from randsae.activations import extract_activations
from randsae.cli import main
from randsae.export import saelens_reconstruct
from randsae.saes import SaeTrainConfig, load_sae, train_saes
from randsae.subjects import TinySubjectConfig, tiny_neox


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # transformer_lens.utils, imported by sae_lens
def test_saelens_loads_the_export_and_reconstructs_the_same(tmp_path, monkeypatch):
    from sae_lens import SAE   # SAELens itself, not a reimplementation (pyproject: the dev extra)
    monkeypatch.setenv("RANDSAE_OUTPUTS", str(tmp_path/"outputs")); run = tmp_path/"outputs"/"tiny"   # the tiny preset's sae folder
    lm = tiny_neox(TinySubjectConfig(hidden_size=16, n_layers=2, n_heads=2, intermediate_size=32, ctx_len=16), vocab_size=64).eval()
    toks = torch.randint(0, 64, (32, 16), generator=torch.Generator().manual_seed(0))
    cfg = SaeTrainConfig(expansion_factor=4, k=8, n_tokens=512, batch_size=4)
    paths = train_saes(lm, toks, [0, 1], run, "trained", cfg, model_key="tinykey/trained/0", progress=False)
    (run/"run.json").write_text(json.dumps({"preset": "tiny", "notebooks": {"sae_pipeline.ipynb": {"subject": "tiny", "ctx_len": 16}}}))
    out = tmp_path/"export"
    with contextlib.redirect_stdout(io.StringIO()) as o: assert main(["export-saes", "--preset", "tiny", "--format", "saelens", str(out)]) == 0
    assert "2 SAE(s)" in o.getvalue()
    index = json.loads((out/"randsae_exports.json").read_text())
    assert [e["path"] for e in index["saes"]] == [f"saes/seed0/trained/blocks.{i}.hook_resid_post" for i in (0, 1)]
    acts = extract_activations(lm, toks[:8], [0, 1], progress=False)
    for layer, e in enumerate(index["saes"]):
        sl = SAE.load_from_disk(out/e["path"], device="cpu")
        assert type(sl).__name__ == "TopKSAE" and (sl.cfg.d_in, sl.cfg.d_sae, sl.cfg.k) == (16, 64, 8)
        md = sl.cfg.metadata
        assert (md.hook_name, md.hf_hook_name, md.model_name) == (f"blocks.{layer}.hook_resid_post", f"gpt_neox.layers.{layer}", "randsae-tiny")
        assert md.randsae["variant"] == "trained" and md.randsae["model_key"] == "tinykey/trained/0" and md.context_size == 16
        ours = load_sae(paths[layer])
        x_real = acts[layer].reshape(-1, 16)
        x_rand = torch.randn(512, 16, generator=torch.Generator().manual_seed(layer))   # unit scale, ~10x the tiny model's activations
        with torch.no_grad():
            for x in (x_real, x_rand):
                want = ours(x).sae_out; tol = dict(rtol=1e-5, atol=1e-5 * want.abs().max().item())   # float32 rounding at the data's scale
                assert torch.allclose(sl(x), want, **tol), (sl(x) - want).abs().max()
                assert torch.allclose(saelens_reconstruct(out/e["path"], x), want, **tol)
                enc = ours.encode(x); dense = torch.zeros(len(x), 64).scatter_(-1, enc.top_indices, enc.top_acts)
                assert torch.allclose(sl.encode(x), dense, rtol=1e-5, atol=1e-5 * dense.abs().max().item())   # the same latents, not only the same sum
                assert (sl.encode(x) > 0).sum(-1).le(8).all()


def test_export_refuses_a_run_without_finished_saes(tmp_path):
    (tmp_path/"run").mkdir()
    with contextlib.redirect_stderr(io.StringIO()) as err: assert main(["export-saes", "--run", str(tmp_path/"run"), str(tmp_path/"x")]) == 2
    assert "no finished SAEs" in err.getvalue() and not (tmp_path/"x").exists()
