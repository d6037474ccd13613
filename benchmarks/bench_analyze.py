"""Time `analyze` on the paper-scale 8-model workload and check memory against published sizes.

Run by hand: ``python benchmarks/bench_analyze.py [--activations]``.

Prints the wall time of the analysis (building the eight models, finding the
shareable groups, accounting parameters) and compares each model's parameter
memory with the widely published fp32 sizes of the torchvision/Keras models
(ResNet50 98 MB, ResNet152 232 MB, VGG16 528 MB, in MiB), which is what the
seed paper's Table 1 "load" column reports for these architectures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from searchmerge.analysis import analyze
from searchmerge.config.study import load_study_file

STUDY = Path(__file__).resolve().parents[1] / "studies" / "paper-scale.yaml"
PUBLISHED_MIB = {"resnet50": 98.0, "resnet152": 232.0, "vgg16": 528.0}
BUDGET_S = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--activations", action="store_true", help="also time activation measurement (bs 1,2,4)")
    args = parser.parse_args()

    workload, _ = load_study_file(STUDY)
    start = time.perf_counter()
    result = analyze(workload)
    elapsed = time.perf_counter() - start
    print(f"analyze, 8 models (parameters and groups): {elapsed:.1f} s (budget {BUDGET_S:.0f} s)"
          f" -> {'OK' if elapsed < BUDGET_S else 'TOO SLOW'}")
    print(f"groups: {len(result.groups)}; no sharing {result.total_bytes / 1e6:.1f} MB;"
          f" max sharing {result.max_sharing_bytes / 1e6:.1f} MB; saved {100 * result.saved_fraction:.1f}%")

    for model in result.models:
        arch = workload.spec(model.name).arch or ""
        if arch in PUBLISHED_MIB:
            mib = model.param_bytes / 2**20
            error = abs(mib - PUBLISHED_MIB[arch]) / PUBLISHED_MIB[arch]
            print(f"{model.name:12s} params {mib:7.1f} MiB  published {PUBLISHED_MIB[arch]:6.1f} MiB"
                  f"  difference {100 * error:4.1f}%  {'OK' if error < 0.15 else 'OFF'}")

    if args.activations:
        start = time.perf_counter()
        measured = analyze(workload, batch_sizes=[1, 2, 4])
        print(f"with activations at batch sizes 1, 2, 4: {time.perf_counter() - start:.1f} s")
        for model in measured.models:
            runs = ", ".join(f"bs={b}: {model.run_bytes(b) / 1e6:.0f} MB" for b in (1, 2, 4))
            print(f"  {model.name:12s} load {model.load_bytes / 1e6:6.0f} MB  run {runs}")


if __name__ == "__main__":
    main()
