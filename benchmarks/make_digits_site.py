"""Write digits-like study files of N cameras, for how the search's cost grows with the workload.

Run by hand from the repository root::

    python benchmarks/make_digits_site.py --cameras 4,8,16 --out benchmarks/data

writes ``OUT/digits-site-N.yaml`` for each N: the settings of ``studies/digits-edge.yaml``
(target, pretraining, fine-tuning, cheap and drift evaluators) and N cameras. The first four
are digits-edge's own (gate, two lobby cameras, dock), the next ones come from ``CAMERAS`` in
order: other scenes with the same mix of model families (three CIFAR-style ResNet-14s to one
VGG-style net, all 8/16/32 channels without affine norms), other digit tasks and other camera
conditions. Past the table it starts over with noisier cameras (``-2``, ``-3``, ... names), so
any N can be written. Each file is ready to run::

    python benchmarks/bench_search.py --study benchmarks/data/digits-site-8.yaml \\
        --storage sqlite:////tmp/digits-site-8.db --strategies greedy --trials 16 --seed 2 \\
        --evaluator cheap --json
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"digit": 10, "parity": 2, "high": 2, "mod3": 3, "loops": 3, "prime": 2}
RESNET = "searchmerge.zoo:small_resnet"
VGG = "searchmerge.zoo:small_vgg"

#: (name, family, task, camera) of the cameras after digits-edge's four.
CAMERAS: tuple[tuple[str, str, str, dict[str, float]], ...] = (
    ("entrance-mod3", RESNET, "mod3", {"rotation_jitter_deg": 5, "noise_std": 0.03}),
    ("entrance-prime", RESNET, "prime", {"rotation_jitter_deg": 5, "noise_std": 0.03}),
    ("yard-digit", RESNET, "digit", {"shift_px": 2, "brightness": 0.05}),
    ("yard-loops", VGG, "loops", {"blur_sigma": 0.5, "noise_std": 0.02}),
    ("garage-parity", RESNET, "parity", {"brightness": -0.15, "contrast": 0.8}),
    ("garage-high", RESNET, "high", {"brightness": -0.15, "contrast": 0.8}),
    ("hall-mod3", RESNET, "mod3", {"rotation_jitter_deg": 15}),
    ("hall-prime", VGG, "prime", {"rotation_deg": 90, "shift_px": 1}),
    ("roof-digit", RESNET, "digit", {"noise_std": 0.08}),
    ("roof-parity", RESNET, "parity", {"noise_std": 0.08}),
    ("stair-high", RESNET, "high", {"blur_sigma": 1.0}),
    ("stair-loops", VGG, "loops", {"rotation_deg": 180}),
)


def site(cameras: int) -> dict[str, Any]:
    """The study document of a site of ``cameras`` cameras."""
    document = yaml.safe_load((ROOT / "studies" / "digits-edge.yaml").read_text())
    models = document["models"][:cameras]
    kwargs = dict(models[0]["kwargs"])
    kwargs.pop("num_classes")
    vgg_kwargs = {k: v for k, v in kwargs.items() if k != "depth"}
    for index in range(cameras - len(models)):
        name, family, task, camera = CAMERAS[index % len(CAMERAS)]
        cycle = index // len(CAMERAS)
        if cycle:
            name = f"{name}-{cycle + 1}"
            camera = {**camera, "noise_std": round(camera.get("noise_std", 0.0) + 0.02 * cycle, 3)}
        model_kwargs = {**(kwargs if family == RESNET else vgg_kwargs), "num_classes": CLASSES[task]}
        models.append({"name": name, "factory": family, "kwargs": copy.deepcopy(model_kwargs), "task": task,
                       "camera": camera})
    document["name"] = f"digits-site-{cameras}"
    document["models"] = models
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default="4,8,16", help="comma-separated camera counts")
    parser.add_argument("--out", default="benchmarks/data")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for count in (int(part) for part in args.cameras.split(",")):
        if count < 1:
            raise SystemExit(f"--cameras: {count} is not a camera count")
        path = out / f"digits-site-{count}.yaml"
        header = (f"# A digits-like site of {count} cameras, written by benchmarks/make_digits_site.py from\n"
                  "# studies/digits-edge.yaml (its settings and first four cameras; see the script).\n")
        path.write_text(header + yaml.safe_dump(site(count), sort_keys=False, width=110))
        print(path)


if __name__ == "__main__":
    main()
