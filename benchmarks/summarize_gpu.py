"""Print the key figures of a GPU benchmark JSON (benchmarks/bench_gpu.py, bench_tiling.py) as a table."""

import json
import sys

KEYS = ("xmodal_seconds_per_iteration", "cpd_pytorch_seconds_per_iteration", "ratio_vs_cpd_pytorch",
        "xmodal_mean_error_um", "cpd_pytorch_mean_error_um", "mean_error_before_um", "cpd_pytorch_status",
        "xmodal_gpu_numpy_io_s", "xmodal_gpu_cupy_io_s", "xmodal_cpu_s", "ckdtree_all_cores_s",
        "torch_cdist_topk_gpu_s", "algorithm", "native_brute_s", "ratio_grid_vs_brute", "ratio_vs_xmodal_cpu", "ratio_vs_ckdtree", "ratio_vs_torch", "max_abs_diff_vs_cpu",
        "grid_s", "dense_s", "cpu_exact_s", "ratio_grid_vs_dense", "grid_pairs", "grid_cells", "cell_edge",
        "xmodal_gpu_s", "ratio_vs_cpu", "xmodal_s", "monai_s", "whole_volume_s", "ratio_vs_monai", "max_abs_diff_xmodal_vs_whole")


def main(path):
    with open(path) as f:
        data = json.load(f)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        vals = [f"{k}={info[k]:.4g}" if isinstance(info[k], float) else f"{k}={info[k]}" for k in KEYS if k in info]
        print(b["name"], " ".join(vals))
    for p in data.get("xmodal_peers_not_measured", []):
        print(f"NOT MEASURED {p['benchmark']}: {p['peer']}: {p['reason']}")
    for name in data.get("xmodal_interrupted", []):
        print(f"INTERRUPTED (no timing) {name}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: summarize_gpu.py RESULT.json [RESULT.json ...]")
    for path in sys.argv[1:]:
        print(f"== {path}")
        main(path)
