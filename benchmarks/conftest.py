"""Shared set-up of the benchmark suites.

Every result file records the machine it was measured on (CPU model, cores, memory, GPU, thread
setting), so figures from different machines are never compared by accident. See README.md here.
"""

from __future__ import annotations

import os
import platform


def machine_description() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import xmodal

        b = xmodal.backends()
        info["xmodal"] = b["version"]
        info["xmodal_threads"] = b["num_threads"]
        info["gpus"] = [d["name"] for d in b["cuda"]["devices"]]
    except Exception as exc:  # the description must never break a run
        info["xmodal_error"] = repr(exc)
    info["machine_label"] = os.environ.get("XMODAL_BENCH_MACHINE", "")
    return info


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["xmodal_machine"] = machine_description()
