"""Measured READ bandwidth: the fastest of a few sums of a large fp32 array (a reduction reads
every byte once and writes nothing, unlike a copy), with torch's threads set as our backend
sets them. The single-stream floor is weight bytes per step / this."""

from __future__ import annotations

import argparse
import os

from benchmarks.workers.common import best_of, emit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from gpt_simple_torch.plugin import default_threads

    torch.set_num_threads(default_threads())
    data = torch.ones(args.mib << 18)  # MiB of float32
    data.sum()  # fault the pages in
    seconds = best_of(args.repeats, data.sum)
    emit({"bytes_per_s": data.nbytes / seconds, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
