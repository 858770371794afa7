"""int8 against fp32 on every runtime and mode (issue 36's figures): bench/export_speed.py with every
model quantized (edge.quant; --quantize 8da8w unless another scheme is given), side by side in one run:
the int8 dense, no-FFN, gated and ACM-only exports, and the fp32 dense export beside them. Figures:
int8_dense_vs_fp32_dense, int8_acm50_model_ratio, int8_acm50_ffn_vs_dense_ffn, int8_overhead_ratio,
int8_exit_ratio, int8_acm50_vs_fp32_dense, size_ratio, max_abs_diff_vs_quantized_eager, branch_mismatches,
near_threshold (bench/export_speed.py's docstring says how each is measured).

    taskset -c 0 .venv/bin/python bench/quant_speed.py --acm out/minilm-acm    # 1 core, ~40 minutes
Last line: one JSON object."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import export_speed  # noqa: E402

if __name__ == "__main__":
    if not any(a == "--quantize" or a.startswith("--quantize=") for a in sys.argv[1:]):
        sys.argv += ["--quantize", "8da8w"]
    export_speed.main()
