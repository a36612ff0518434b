"""The README's main command: from nothing to a fine-tuned detector on the CPU.

    python -m yolox_jax.quickstart --output-dir quickstart_out [--epochs 15] [--mirror DIR]

1. obtains the official YOLOX-Nano COCO weights, the official demo image and the raccoon dataset
   (`yolox_jax.assets`: the public sources, or a local mirror), sha256-verified;
2. converts the weights (no torch) to `OUT/yolox_nano/` and writes the COCO detections of
   `dog.jpg` (`OUT/dog_detections.{jpg,json}`);
3. fine-tunes them on the raccoon training split with `configs/yolox_nano_raccoon.py` (the
   official reference recipe; fewer epochs by default so that it fits in minutes on 2 cores),
   with VOC evaluation on the 40 test images before, during and after training;
4. writes the workdir (`OUT/train/`: orbax checkpoints, `final/` weights, tensorboard logs,
   metrics.jsonl), the VOC numbers (`OUT/raccoon_eval.json`) and a picture of the detections on
   test images (`OUT/raccoon_detections.jpg`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import absl.flags
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _config(data_dir: Path, weights: Path, epochs: int):
    from yolox_jax.config import load_config_file

    path = REPO / "configs" / "yolox_nano_raccoon.py"
    if path.exists():
        c = load_config_file(str(path))
    else:  # an installed wheel has no configs/: the same recipe, inline
        raise FileNotFoundError(f"{path} is missing: run the quickstart from a checkout")
    c.data.data_dir = str(data_dir)
    c.train.init_from = str(weights)
    c.train.max_epoch = int(epochs)
    c.train.eval_interval = max(1, int(epochs) // 3)
    return c


def _detect_dog(weights_dir: Path, dog: Path, out: Path) -> list[dict]:
    from yolox_jax.data.classes import class_names_for
    from yolox_jax.data.io import read_image
    from yolox_jax.inference import Predictor
    from yolox_jax.visualize import draw_detections

    predictor = Predictor.from_checkpoint(weights_dir, conf=0.3, nms=0.45, class_agnostic=True,
                                          batch_buckets=(1,))
    names = class_names_for(tuple(predictor.config.data.class_names),
                            predictor.model.num_classes)
    img = read_image(dog)
    (det,) = predictor([img])
    dets = det.to_json(names)
    cv2.imwrite(str(out / "dog_detections.jpg"),
                draw_detections(img.copy(), det.boxes, det.scores, det.classes, names, 0.3))
    (out / "dog_detections.json").write_text(json.dumps(dets, indent=1))
    return dets


def _raccoon_picture(model, variables, config, out: Path, n: int = 8) -> None:
    from yolox_jax.data.datasets import read_split
    from yolox_jax.data.io import read_image
    from yolox_jax.inference import Predictor
    from yolox_jax.visualize import draw_detections

    info = read_split(config, "val")
    paths = [r.image_path for r in info.records[:n]]
    predictor = Predictor(model, variables, config=config, conf=0.3, nms=0.45,
                          batch_buckets=(len(paths),))
    images = [read_image(p) for p in paths]
    tiles = []
    for img, det in zip(images, predictor(images), strict=True):
        draw_detections(img, det.boxes, det.scores, det.classes, info.class_names, 0.3)
        s = 320 / max(img.shape[:2])
        tile = np.full((320, 320, 3), 114, np.uint8)
        small = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)))
        tile[: small.shape[0], : small.shape[1]] = small
        tiles.append(tile)
    while len(tiles) % 4:
        tiles.append(np.full((320, 320, 3), 114, np.uint8))
    rows = [np.concatenate(tiles[i : i + 4], axis=1) for i in range(0, len(tiles), 4)]
    cv2.imwrite(str(out / "raccoon_detections.jpg"), np.concatenate(rows, axis=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolox_jax.quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="quickstart_out")
    parser.add_argument("--epochs", type=int, default=15,
                        help="fine-tuning epochs (the official reference run uses 30)")
    parser.add_argument("--mirror", default=None, help="local asset mirror (default: auto)")
    parser.add_argument("--offline", action="store_true", help="never download assets")
    args = parser.parse_args(argv)
    absl.flags.FLAGS.mark_as_parsed()  # grain workers read an absl flag

    from yolox_jax import assets
    from yolox_jax.plots import plot_results
    from yolox_jax.train.trainer import train
    from yolox_jax.weights.checkpoint import load_checkpoint, load_torch_checkpoint, save_checkpoint

    t0 = time.time()
    out = Path(args.output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    print("[1/4] assets", flush=True)
    try:
        got = {n: assets.fetch(n, args.mirror, args.offline)
               for n in ("yolox_nano", "dog", "voc_raccoon")}
    except assets.AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n, p in got.items():
        print(f"  {n}: {p}")

    print("[2/4] convert the official weights and detect on dog.jpg", flush=True)
    variables, coco_config = load_torch_checkpoint(got["yolox_nano"])
    weights_dir = save_checkpoint(out / "yolox_nano", variables, coco_config)
    dets = _detect_dog(weights_dir, got["dog"], out)
    print("  " + ", ".join(f"{d['class']} {d['score']:.3f}" for d in dets))

    print(f"[3/4] fine-tune on voc_raccoon for {args.epochs} epochs", flush=True)
    config = _config(got["voc_raccoon"], got["yolox_nano"], args.epochs)
    workdir = out / "train"
    summary = train(config, workdir)
    curve = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [c for c in curve if c["kind"] == "eval"]

    print("[4/4] the final (EMA) weights on the 40 test images", flush=True)
    model, final_vars, final_cfg = load_checkpoint(workdir / "final")
    stats = summary["eval"]  # the trainer's evaluation of these weights after the last epoch
    _raccoon_picture(model, final_vars, final_cfg, out)
    curve_png = plot_results(workdir, out / "raccoon_training_curve.png")
    minutes = (time.time() - t0) / 60
    result = {"final": {k: v for k, v in stats.items() if isinstance(v, (int, float))},
              "curve": evals, "steps": summary["step"], "minutes": minutes}
    (out / "raccoon_eval.json").write_text(json.dumps(result, indent=1))
    print(f"done in {minutes:.1f} min: VOC07 mAP@0.5 {stats.get('mAP50', float('nan')):.4f}, "
          f"mAP@0.5:0.95 {stats.get('mAP50_95', float('nan')):.4f}")
    print("  mAP@0.5 per evaluation: " + ", ".join(
        f"epoch {c.get('epoch', '?')} {c.get('mAP50', float('nan')):.3f}" for c in evals))
    print(f"  outputs in {out}: yolox_nano/, dog_detections.jpg, train/ (tensorboard: "
          f"tensorboard --logdir {workdir / 'tensorboard'}), raccoon_detections.jpg, "
          f"{curve_png.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
