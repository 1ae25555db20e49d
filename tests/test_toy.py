"The toy-model contract used by checks outside the notebooks, and the generator against the paper's own loop."
import inspect

import pytest
import torch

from randsae.toy import sharkey_data, sharkey_data_loop, sharkey_statistics, gaussian_control, lomax_data
from randsae.dictionary import SweepConfig, train_sweep, sweep_metrics


def test_sharkey_signature_and_shapes():
    sig = inspect.signature(sharkey_data)
    assert list(sig.parameters)[:6] == ["n_samples", "n_inputs", "n_features", "avg_active", "lambda_decay", "seed"]
    assert sig.parameters["seed"].kind is inspect.Parameter.KEYWORD_ONLY
    assert (sig.parameters["n_inputs"].default, sig.parameters["n_features"].default) == (256, 512)
    d = sharkey_data(300, seed=0)
    assert d.x.shape == (300, 256) and d.features.shape == (256, 512) and d.coefficients.shape == (300, 512)
    torch.testing.assert_close(d.features.norm(dim=0), torch.ones(512))
    torch.testing.assert_close(d.x, d.coefficients @ d.features.T, atol=1e-4, rtol=1e-4)


def test_vectorised_matches_fig12_loop_statistics():
    "Same distribution as the paper's loop: mean active features within 3%, same frequency profile over feature index."
    fast, loop = sharkey_data(6000, seed=0), sharkey_data_loop(6000, seed=1)
    sf, sl = sharkey_statistics(fast), sharkey_statistics(loop)
    assert abs(sf["mean_active_per_sample"] - sl["mean_active_per_sample"]) / sl["mean_active_per_sample"] < 0.03
    prof = lambda d: (d.coefficients > 0).float().mean(0).reshape(8, -1).sum(1)
    assert ((prof(fast) - prof(loop)).abs() / prof(loop)).max() < 0.1
    assert sf["mean_active_per_sample"] == pytest.approx(5.0, rel=0.05)


def test_correlation_variant_concentrates_firing():
    "With unit variances the decay exponent bites: most firing goes to the first features (unlike the raw covariance)."
    raw, corr = sharkey_data(3000, seed=0), sharkey_data(3000, seed=0, covariance="correlation")
    assert sharkey_statistics(corr)["share_of_firing_in_first_10pct"] > 0.5 > sharkey_statistics(raw)["share_of_firing_in_first_10pct"]


@pytest.mark.parametrize("call, message", [
    (lambda: sharkey_data(10, avg_active=513), "avg_active must be in (0, 512]"),
    (lambda: sharkey_data(0), "n_samples must be a positive integer"),
    (lambda: sharkey_data(10, lambda_decay=-0.5), "lambda_decay must be in [0"),
    (lambda: lomax_data(alpha=-1), "alpha must be in (0"),
    (lambda: gaussian_control(torch.zeros(3)), "x must be 2-D"),
    (lambda: SweepConfig(16, [0.1, -2.0]), "l1_coefficients[1] must be in [0"),
    (lambda: SweepConfig(16, [0.1], activation="gelu"), "activation must be"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=None) as e: call()
    assert message in str(e.value)


def test_glove_missing_file_error(tmp_path):
    from randsae.glove import load_glove
    with pytest.raises(FileNotFoundError) as e: load_glove(300, path=tmp_path)
    assert "glove.6B.300d.txt" in str(e.value) and "nlp.stanford.edu" in str(e.value)


def test_sae_recovers_ground_truth_in_goldilocks_zone():
    "Fig 5's claim at small size: a moderate penalty recovers the generating features; none, or too much, does not."
    d = sharkey_data(4000, n_inputs=32, n_features=48, avg_active=3, seed=0)
    res = train_sweep(d.x, SweepConfig(96, [0.0, 0.3, 3.0], n_epochs=30, batch_size=64), seeds=[0], progress=False)
    m = sweep_metrics(res, d.x, d.features).set_index("l1_coefficient")
    assert m.loc[0.3, "mmcs"] > 0.9 and m.loc[0.3, "recovery_rate"] > 0.5
    assert m.loc[0.3, "mmcs"] > m.loc[0.0, "mmcs"] + 0.2 and m.loc[0.3, "mmcs"] > m.loc[3.0, "mmcs"] + 0.2


def test_normalised_frontier_is_scale_free():
    "A dataset and the same dataset times 5, both brought to one mean squared norm, give the same frontiers and the same per-seed readings."
    from randsae.dictionary import rescale_to_mean_squared_norm, mean_squared_norm, pareto_table, sparsity_at_explained_variance_per_seed
    import pandas as pd
    x = torch.stack([sharkey_data(1500, n_inputs=16, n_features=32, avg_active=2, seed=s).x for s in (0, 1)])
    target = mean_squared_norm(x)
    cfg = SweepConfig(48, [0.01, 0.1, 1.0], n_epochs=8, batch_size=32)
    runs = []
    for name, data in {"x": x, "5x": 5 * x}.items():
        xs = rescale_to_mean_squared_norm(data, target)
        runs.append(sweep_metrics(train_sweep(xs, cfg, [0, 1], progress=False), xs).assign(dataset=name))
    metrics = pd.concat(runs, ignore_index=True)
    pt = pareto_table(metrics).set_index(["measure", "l1_coefficient", "dataset"]).sort_index()
    for col in ["sparsity", "explained_variance", "sparsity_lo", "sparsity_hi"]:
        a, b = pt.xs("x", level="dataset")[col], pt.xs("5x", level="dataset")[col]
        assert ((a - b).abs() <= 1e-3 * (1 + a.abs())).all(), col
    at = sparsity_at_explained_variance_per_seed(metrics, [0.2, 0.4, 0.6]).set_index(["measure", "seed", "explained_variance", "dataset"]).sparsity.unstack()
    assert at["x"].notna().any()
    assert ((at["x"] - at["5x"]).abs() <= 1e-3 * (1 + at["x"].abs())).fillna(True).all()
    # Without the rescaling the paper's L1/sqrt(L2) axis moves with the scale (x5 -> about sqrt(5) = 2.24, with the penalty scaled to match).
    raw5 = sweep_metrics(train_sweep(5 * x, SweepConfig(48, [0.05, 0.5, 5.0], n_epochs=8, batch_size=32), [0, 1], progress=False), 5 * x)
    raw1 = sweep_metrics(train_sweep(x, cfg, [0, 1], progress=False), x)
    alive = raw1.l0 > 1
    ratio = raw5.l1_over_sqrt_l2[alive] / raw1.l1_over_sqrt_l2[alive]   # the SAEs differ a little too (Adam's step size is not scale free)
    assert ratio.between(1.4, 3.2).all() and abs(ratio.median() - 5 ** 0.5) < 0.5
