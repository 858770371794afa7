"""profiler: what an exported artifact costs on a target, at each of its budget levels and on each
branch, against a latency budget; and presets chosen from those measurements (profiler.presets).

    import profiler
    report = profiler.profile("out/minilm-pte", "local", profiler.ProfileConfig(budget_ms=20))
    report["budget"]["pass"], report["levels"][0]["stats"]["p90"]
"""
from __future__ import annotations

from profiler.native import PLATFORMS as RUNNER_PLATFORMS
from profiler.native import build_runner, host_runner
from profiler.presets import Preset, choose_preset, list_presets, load_preset
from profiler.profiling import RUNNERS, ProfileConfig, profile, stats, summarize
from profiler.report import table as report_table
from profiler.report import write as write_report
from profiler.targets import TARGETS, target_for

__all__ = ["ProfileConfig", "RUNNERS", "TARGETS", "profile", "stats", "summarize",
           # presets, reports and the native runner (profiler.presets, .report, .native) at package level
           "Preset", "RUNNER_PLATFORMS", "build_runner", "choose_preset", "host_runner", "list_presets", "load_preset",
           "report_table", "write_report"]
