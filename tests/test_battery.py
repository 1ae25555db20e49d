"The battery stage (issue 12 §1, §2): planned after sae and interp, its parameters checked before anything runs. Its metrics' known answers are tested in nbs/23_battery.ipynb."
import numpy as np
import pytest


def test_battery_stage_is_planned_and_checked(tmp_path):
    from randsae.config import get_preset
    from randsae.runner import plan_runs
    tiny = get_preset("tiny")
    with pytest.raises(ValueError, match="stage 'battery': context_max_windows must be a positive"):
        plan_runs(tiny, ["battery"], {"context_max_windows": 0}, root=tmp_path)
    with pytest.raises(ValueError, match="need stage 'sae'"):
        plan_runs(tiny, ["battery"], root=tmp_path)
    from randsae.config import STAGES
    assert STAGES["battery"].requires == ("sae", "interp") and list(tiny.stages)[-2:] == ["models", "ledger"]
    order = list(tiny.stages); assert order.index("interp") < order.index("battery")
    b = tiny.stages["battery"]
    assert b.out_name == tiny.stages["interp"].out_name and b.params["llm_client"] == "smollm2" and b.params["llm_n_test"] == 10


def test_known_answers_through_the_stage_helpers():
    "The issue's known answers on constructed latents, through the functions the stage calls."
    from randsae.autointerp import null_model_scores, records_from_arrays
    from randsae.battery import battery, explanation_gap, shuffled_null_scores
    rng = np.random.default_rng(0); n, W = 40, 16
    lat = np.repeat(np.arange(n), 60); split = np.tile(np.array(["train"] * 20 + ["test"] * 25 + ["negative"] * 15), n)
    tok = rng.integers(n, 400, (len(lat), W)); pos = split != "negative"; tok[pos, rng.integers(0, W, pos.sum())] = lat[pos]
    detector = records_from_arrays(lat, split, tok, np.where(tok == lat[:, None], 2.0, 0), variant="own_token", layer=0)
    b = battery(detector)
    assert np.allclose(b.token_r2, 1) and b.single_token.all()                 # a pure token detector: token R² = 1
    noise = records_from_arrays(lat, split, tok, np.where(rng.random(tok.shape) < 0.2, rng.exponential(1, tok.shape), 0), variant="noise", layer=0)
    assert abs(battery(noise).token_r2.mean()) < 0.02                           # a token-independent latent: R² ~ 0
    gap = explanation_gap(pd_concat([null_model_scores(detector), shuffled_null_scores(detector)])).set_index("scorer")
    assert ((gap.auroc_shuffled - 0.5).abs() < 0.05).all() and (gap.auroc_matched > 0.95).all()   # shuffled null explanations: AUROC ~ 0.5


def pd_concat(frames):
    import pandas as pd
    return pd.concat(frames, ignore_index=True)
