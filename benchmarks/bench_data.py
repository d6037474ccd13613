"""Streamed user data: peak memory as the training set grows, and what the image cache saves.

Two small classifiers (searchmerge.zoo's ResNet-8s) with their own weights read an image
folder of 640x480 JPEGs (camera frames) resized to 32x32. Each evaluation (``--share all``,
one epoch over the whole training split, early exit off) runs in a fresh process on one
thread. With N and with 10 N training images the script measures:

1. the peak resident memory (RSS) of the evaluation: streamed through a DataLoader, it
   should stay roughly flat while the data grows 10x;
2. the time of the first evaluation after the image cache was emptied (every image decoded
   and resized, and written to the cache) and of the second (every image read from the
   cache): the time the disk cache saves.

    .venv/bin/python benchmarks/bench_data.py            # N = 100 per class (3 classes)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

STUDY = """
name: bench-data
seed: 0
target: 0.5
data: {{cache: {cache}}}
evaluator: {{fraction: 1.0, max_epochs: 1, batch_size: 32, early_exit: false, init: first}}
models:
  - name: gate
    factory: searchmerge.zoo:small_resnet
    kwargs: {{num_classes: 3, widths: [8, 16, 16]}}
    weights: gate.safetensors
    task: classification
    data: {{format: imagefolder, root: images, image_size: 32}}
  - name: lobby
    factory: searchmerge.zoo:small_resnet
    kwargs: {{num_classes: 3, widths: [8, 16, 16]}}
    weights: lobby.safetensors
    task: classification
    data: {{format: imagefolder, root: images, image_size: 32, mean: 0.5, std: 0.25}}
"""

#: Run in a fresh process: the evaluation's peak RSS and time, as JSON.
CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    torch.set_num_threads(1)  # on a shared machine, one thread keeps the timings comparable
    from searchmerge.training.evaluate import evaluate_plan
    from searchmerge.training.prepare import prepare_study
    from searchmerge.config.study import open_study_file
    study = open_study_file(sys.argv[1], storage=sys.argv[2])
    if sys.argv[3] == "prepare":
        prepare_study(study)
    else:
        prepare_study(study)  # loads the stored originals
        start = time.perf_counter()
        evaluate_plan(study, "all")
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def write_images(root: Path, per_class: int, seed: int) -> None:
    """``root/{train,val}/classK/*.jpg``: 640x480 JPEGs whose colour tells the class (smooth noise)."""
    rng = np.random.default_rng(seed)
    colours = ((220, 40, 40), (40, 200, 40), (40, 60, 220))
    for split, count in (("train", per_class), ("val", 20)):
        for label, colour in enumerate(colours):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                coarse = np.clip(np.array(colour) + rng.normal(0, 40, size=(30, 40, 3)), 0, 255).astype(np.uint8)
                frame = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BILINEAR)
                frame.save(folder / f"{index:05d}.jpg", quality=90)


def write_weights(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from searchmerge.zoo import small_resnet

    for index, name in enumerate(("gate", "lobby")):
        torch.manual_seed(index)
        save_file(small_resnet(num_classes=3, widths=(8, 16, 16)).state_dict(), str(folder / f"{name}.safetensors"))


def run(folder: Path, what: str) -> dict[str, float]:
    study = folder / "study.yaml"
    study.write_text(STUDY.format(cache="true"))
    storage = f"sqlite:///{folder / 'study.db'}"
    done = subprocess.run([sys.executable, "-c", CHILD, str(study), storage, what], cwd=REPO, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) if what == "evaluate" else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100, help="training images per class at 1x (default 100)")
    args = parser.parse_args()
    peaks = {}
    with tempfile.TemporaryDirectory() as temporary:
        for factor in (1, 10):
            folder = Path(temporary) / f"x{factor}"
            folder.mkdir()
            write_images(folder / "images", args.per_class * factor, seed=factor)
            write_weights(folder)
            run(folder, "prepare")
            shutil.rmtree(folder / "study.db.checkpoints.data-cache")  # prepare filled it: start empty
            first, second = run(folder, "evaluate"), run(folder, "evaluate")
            peaks[factor] = second["peak_rss_mb"]
            print(f"{3 * args.per_class * factor:6d} training images (640x480 JPEG -> 32x32), one evaluation:"
                  f" first {first['seconds']:.1f} s (decoding, peak RSS {first['peak_rss_mb']:.0f} MB),"
                  f" second {second['seconds']:.1f} s (from the disk cache, peak RSS {second['peak_rss_mb']:.0f} MB):"
                  f" the cache saves {first['seconds'] - second['seconds']:.1f} s"
                  f" ({100 * (1 - second['seconds'] / first['seconds']):.0f}%)", flush=True)
    print(f"training set 10x larger: peak RSS {peaks[1]:.0f} MB -> {peaks[10]:.0f} MB ({peaks[10] / peaks[1]:.2f}x)")


if __name__ == "__main__":
    main()
