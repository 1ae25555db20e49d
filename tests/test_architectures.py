"Bring your own model: the five variants, activation extraction, SAE training and evaluation on tiny models of three architectures other than Pythia's."
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from randsae.activations import extract_activations
from randsae.pretrained import check_subject, init_like
from randsae.saes import SaeTrainConfig, evaluate_saes, train_saes
from randsae.variants import VARIANTS, make_variant, same_weights

SMALL = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
ARCHS = {   # SmolLM2's, Gemma-3's, and a third one that no preset uses (untied embeddings)
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True)),
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(**SMALL, head_dim=16, sliding_window=8)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=False)),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_variants_and_saes_on_other_architectures(arch, tmp_path):
    torch.manual_seed(0); model = ARCHS[arch]().eval()
    info = check_subject(model)
    assert info["n_layers"] == 2 and info["d_model"] == 32 and info["tied_embeddings"] == (arch != "qwen2")
    assert (info["embedding_scale"] > 1) == (arch == "gemma3")   # Gemma scales its embeddings by sqrt(d) inside the module
    step0 = init_like(model, 7); assert not same_weights(step0, model)   # (the "trained" stand-in is itself an init, under seed 0)
    tokens = torch.randint(0, 128, (64, 16), generator=torch.Generator().manual_seed(1))
    emb = model.get_input_embeddings().weight
    for v in VARIANTS:
        m = make_variant(v, model, seed=1, step0_model=step0)
        e = m.get_input_embeddings().weight
        if v == "rerandomized_incl_emb": assert not torch.equal(e, emb)
        if v in ("rerandomized_excl_emb", "control"): assert torch.equal(e, emb)
        if info["tied_embeddings"]: assert m.get_output_embeddings().weight is e, "the tie is kept"
        acts = extract_activations(m, tokens[:4], [0, 1], progress=False)
        assert acts[1].shape == (64, 32) and torch.isfinite(acts[1]).all()
        paths = train_saes(m, tokens, [0, 1], tmp_path/arch, v, SaeTrainConfig(expansion_factor=2, k=4, n_tokens=512, batch_size=4), progress=False)
        met = evaluate_saes(m, paths, tokens[:8], variant=v, ce=(v == "trained"))
        assert len(met) == 2 and met.explained_variance.between(-1, 1).all() and (met.l0 == 4).all()
        if v == "trained": assert met.ce_loss_score.notna().all()
    assert torch.equal(model.get_input_embeddings().weight, emb), "the trained model is never changed"


def test_a_model_without_blocks_is_refused_naming_what_it_lacks():
    class Bag(torch.nn.Module):
        def __init__(self): super().__init__(); self.emb = torch.nn.Embedding(10, 4)
        def get_input_embeddings(self): return self.emb
        def get_output_embeddings(self): return self.emb
    with pytest.raises(ValueError, match="Bag cannot be a subject: it lacks one list of transformer blocks"):
        check_subject(Bag())
