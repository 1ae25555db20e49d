"The benchmark code runs and reports every figure the issue asks for (ratios are printed by `randsae bench toy`, never asserted)."
from randsae.bench import bench_sharkey, bench_sweep


def test_bench_reports_all_figures():
    s = bench_sharkey(n_samples=300, repeats=1)
    assert {"sharkey_speedup", "sharkey_floor_ratio", "sharkey_mean_active_rel_diff"} <= set(s) and s["sharkey_speedup"] > 0
    w = bench_sweep(n_inputs=16, n_latents=32, n_seeds=1, n_coefficients=2, n_samples=512, batch_size=64, n_conventional=1)
    assert {"sweep_matmul_fraction", "sweep_vs_one_at_a_time"} <= set(w) and w["sweep_matmul_fraction"] > 0
