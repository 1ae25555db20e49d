"The benchmark code runs and reports every figure the issue asks for (ratios are printed by `randsae bench toy`, never asserted)."
from randsae.bench import bench_sharkey, bench_sweep


def test_bench_reports_all_figures():
    s = bench_sharkey(n_samples=300, repeats=1)
    assert {"sharkey_speedup", "sharkey_floor_ratio", "sharkey_mean_active_rel_diff"} <= set(s) and s["sharkey_speedup"] > 0
    w = bench_sweep(n_inputs=16, n_latents=32, n_seeds=1, n_coefficients=2, n_samples=512, batch_size=64, n_conventional=1)
    assert {"sweep_matmul_fraction", "sweep_vs_one_at_a_time"} <= set(w) and w["sweep_matmul_fraction"] > 0


def test_bench_autointerp_reports_all_figures():
    from randsae.bench import bench_autointerp
    b = bench_autointerp(n_latents=2, n_examples=4, n_generate=2)
    assert {"batched_scoring_speedup", "cached_rerun_speedup", "null_model_latents_per_s", "battery_latents_per_s"} <= set(b)
    assert b["batched_vs_generate_max_abs_diff"] < 0.05, "batched scoring and generate() must agree on P('1')"
    assert b["f32_vs_bf16_max_abs_diff"] < 0.05 and b["f32_scoring_speedup"] > 0, "float32 and bf16 SmolLM2 must agree on P('1')"
    assert b["cached_rerun_speedup"] > 1 and b["null_model_latents_per_s"] > 0
