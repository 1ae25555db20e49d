"SAE-side random baselines after real sparsify training (frozen tensors bit-identical, soft-frozen cone held at every step) and the grid stages' parameter checks."
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from randsae.config import get_preset
from randsae.runner import plan_runs
from randsae.saes import SaeTrainConfig, apply_baseline, initial_sae, load_sae, project_to_cone, train_saes


def tiny_lm() -> GPTNeoXForCausalLM:
    cfg = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0); return GPTNeoXForCausalLM(cfg).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "Every baseline trained with each optimiser for 32 steps on two layers of a tiny GPT-NeoX."
    torch.set_num_threads(1)
    lm, out = tiny_lm(), tmp_path_factory.mktemp("baselines")
    toks = torch.randint(0, 64, (128, 16), generator=torch.Generator().manual_seed(0))
    got = {}
    for opt in ("adam", "signum"):
        for b in ("none", "frozen_decoder", "soft_frozen_decoder", "frozen_encoder"):
            cfg = SaeTrainConfig(expansion_factor=4, k=4, n_tokens=128 * 16, batch_size=4, optimizer=opt, lr=3e-2, baseline=b, seed=3)
            paths = train_saes(lm, toks, [0, 1], out/opt, b, cfg, progress=False)
            got[opt, b] = {l: load_sae(p) for l, p in paths.items()}
    return got, initial_sae(SaeTrainConfig(expansion_factor=4, k=4, seed=3), 32)


@pytest.mark.parametrize("opt", ["adam", "signum"])
def test_frozen_tensors_bit_identical_and_the_rest_trains(trained, opt):
    saes, init = trained
    for l in (0, 1):
        fd, fe, plain = saes[opt, "frozen_decoder"][l], saes[opt, "frozen_encoder"][l], saes[opt, "none"][l]
        assert torch.equal(fd.W_dec, init.W_dec), "frozen decoder moved"
        assert torch.equal(fe.encoder.weight, init.encoder.weight), "frozen encoder moved"
        assert (fd.encoder.weight - init.encoder.weight).abs().max() > 1e-3 and (fe.W_dec - init.W_dec).abs().max() > 1e-3
        assert (fd.b_dec - init.b_dec).abs().max() > 0 and (fe.encoder.bias - init.encoder.bias).abs().max() > 0   # the biases train
        assert (plain.W_dec - init.W_dec).abs().max() > 1e-3 and (plain.encoder.weight - init.encoder.weight).abs().max() > 1e-3


@pytest.mark.parametrize("opt", ["adam", "signum"])
def test_soft_frozen_decoder_within_cone_for_every_latent(trained, opt):
    saes, init = trained
    for l in (0, 1):
        cos = F.cosine_similarity(saes[opt, "soft_frozen_decoder"][l].W_dec, init.W_dec, dim=-1)
        assert cos.min() >= 0.8 - 1e-6, cos.min()
        free = F.cosine_similarity(saes[opt, "none"][l].W_dec, init.W_dec, dim=-1)
        assert free.min() < 0.8   # the same training without the constraint leaves the cone: the check can fail
        if opt == "adam": assert (cos < 0.8 + 1e-4).any(), "the constraint never bound"   # signum saves averaged weights, inside the cone


def test_soft_frozen_cone_holds_before_every_forward_pass():
    "sparsify's training step by hand: after each renormalisation (the baseline projects there) every row is in the cone, and rows inside are untouched."
    from sparsify import SparseCoder, SparseCoderConfig
    torch.manual_seed(0); x = torch.randn(512, 16)
    sae = apply_baseline(SparseCoder(16, SparseCoderConfig(num_latents=64, k=4)), "soft_frozen_decoder", 0.8)
    w0 = sae.W_dec.detach().clone(); opt = torch.optim.Adam(sae.parameters(), lr=5e-2); bound = 0
    for step in range(40):
        sae.set_decoder_norm_to_unit_norm()
        cos = F.cosine_similarity(sae.W_dec, w0, dim=-1); assert cos.min() >= 0.8 - 1e-6, (step, cos.min())
        bound += int((cos < 0.8 + 1e-4).sum())
        sae(x[(step % 8) * 64:(step % 8 + 1) * 64]).fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions(); opt.step(); opt.zero_grad()
    assert bound > 0


def test_project_to_cone_known_answer():
    "A row at 90 degrees lands at exactly cos 0.8 in the plane it spans with its initial row; rows inside stay bit-identical."
    w0 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]); w = torch.tensor([[0.0, 1.0, 0.0], [0.9, 0.0, math.sqrt(1 - 0.81)]])
    p = project_to_cone(w.clone(), w0, 0.8)
    torch.testing.assert_close(p[0], torch.tensor([0.8, 0.6, 0.0]))
    assert torch.equal(p[1], w[1])


@pytest.mark.parametrize("stage, field, value, message", [
    ("baselines", "sae_kinds", ["none", "frozen"], "sae_kinds[1] must be one of"),
    ("baselines", "soft_frozen_min_cos", 1.5, "soft_frozen_min_cos must be in"),
    ("baselines", "seeds", [], "seeds must hold 1 to"),
    ("baselines", "n_latents", 0, "n_latents must be a positive integer"),
    ("baselines", "cache_n_tokens", -1, "cache_n_tokens must be a positive integer"),
    ("sweep", "expansion_factors", [16, 0], "expansion_factors[1] must be a positive integer"),
    ("sweep", "ks", [16, 16], "ks must be distinct"),
    ("sweep", "variants", ["trained", "random"], "variants[1] must be one of"),
])
def test_dry_run_validation_names_the_field(tmp_path, stage, field, value, message):
    with pytest.raises(ValueError, match=f"stage '{stage}': " + message.replace("[", r"\[").replace("]", r"\]")):
        plan_runs(get_preset("tiny"), [stage], {field: value}, root=tmp_path)


def test_tiny_preset_parameters_pass_and_plan(tmp_path):
    "The preset's own parameters are valid; without a finished sae stage the plan says which stage to run."
    for stage in ("baselines", "sweep"):
        with pytest.raises(ValueError, match="run it first"):
            plan_runs(get_preset("tiny"), [stage], {}, root=tmp_path)
