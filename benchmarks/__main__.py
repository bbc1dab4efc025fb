"""``python -m benchmarks [--profile quick|full] [--scenarios 1,2,...]``: run the suite, print the
table, save it under ``benchmarks/results/``. See ``benchmarks/README.md``."""

from __future__ import annotations

import argparse
import time

from benchmarks import report
from benchmarks.machine import background_cores, children_cpu, cpu_times, machine_info
from benchmarks.suite import PROFILES, Suite


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument(
        "--scenarios", default="1,2,3,4,5,6,7", help="comma-separated scenario numbers"
    )
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    scenarios = [int(s) for s in args.scenarios.split(",") if s.strip()]
    date = time.strftime("%Y-%m-%d")
    log = report.RESULTS / f"{date}-{profile.name}.log"
    report.RESULTS.mkdir(parents=True, exist_ok=True)
    log.write_text("", encoding="utf-8")
    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['cpus_usable']} CPUs; tools log to {log}")
    before = background_cores()
    print(f"background load before the run: {before:.2f} cores")
    busy0, _ = cpu_times()
    cpu0, start = children_cpu(), time.perf_counter()
    suite = Suite(profile, log, scenarios)
    suite.run()
    seconds = time.perf_counter() - start
    busy1, _ = cpu_times()
    header = {
        "profile": profile.name,
        "date": date,
        "scenarios": scenarios,
        "machine": machine,
        "threads": (
            "gpt-simple torch/onnx: every usable CPU, torch's OpenMP set to PASSIVE waiting "
            "before torch loads, ORT spinning off (the backends' defaults); transformers: "
            "torch's default threads, OMP_WAIT_POLICY=PASSIVE like ours"
        ),
        "background_before": before,
        "background_mean": max(0.0, (busy1 - busy0 - (children_cpu() - cpu0)) / seconds),
        "seconds": seconds,
    }
    markdown = report.render(suite.rows, header)
    print()
    print(markdown)
    md, js = report.save(suite.rows, header, markdown)
    print(f"saved {md} and {js}")


if __name__ == "__main__":
    main()
