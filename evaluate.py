"""Evaluate a checkpoint on a COCO or VOC dataset, as the official `tools/eval.py`.

    python evaluate.py -c yolox_nano.pth --data-dir COCO --ann annotations/instances_val2017.json
    python evaluate.py -c my_export/ --data-dir VOCdevkit/VOC2007 --voc-split test
    python evaluate.py -c workdir/ --config configs/yolox_s.py      # the config's data section

Defaults are the official evaluation's: ValTransform at the config's test size, conf 0.001, NMS
0.65 class-aware, every anchor into NMS and every detection kept (`--pre-nms-topk 0
--max-det 0`). `--ann` (relative to `--data-dir`, or under its `annotations/`) means COCO; a
`--data-dir` without `--ann` means VOC; neither: the config's `data` section. VOC is scored with
the VOC2007 11-point metric (`--metric area` for the area under the PR curve).

Prints the 12 COCOeval numbers and the per-class AP table (COCO) or mAP@0.5, mAP@0.5:0.95 and
per-class AP (VOC), then forward / NMS ms per image and images/s. `--output-dir` gets the
detections json (COCO results format for COCO), `--stats-out` the numbers as json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=None,
                   help="configs/*.py or a variant name; default: from the checkpoint")
    p.add_argument("--checkpoint", "-c", required=True,
                   help="exported folder, training workdir, official .pth, or .onnx file")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "openvino"), default="auto",
                   help="runtime for a .onnx --checkpoint (auto: onnxruntime, else OpenVINO)")
    p.add_argument("--data-dir", default=None, help="dataset root; default: config data.data_dir")
    p.add_argument("--ann", default=None,
                   help="COCO json relative to --data-dir (or its annotations/); omitted: VOC")
    p.add_argument("--images", default=None,
                   help="COCO image folder relative to --data-dir; default: from the json name")
    p.add_argument("--voc-split", default="test", help="VOC ImageSets/Main/<split>.txt")
    p.add_argument("--class-names", default=None,
                   help="comma-separated VOC class names; default: config data.class_names, "
                        "else the 20 VOC classes")
    p.add_argument("--metric", choices=("voc07", "area"), default="voc07",
                   help="VOC AP: 11-point VOC2007 (official default) or area under the PR curve")
    p.add_argument("--batch-size", "-b", type=int, default=8)
    p.add_argument("--conf", type=float, default=0.001, help="score threshold (obj * cls)")
    p.add_argument("--nms", type=float, default=0.65, help="NMS IoU threshold")
    p.add_argument("--class-agnostic", action="store_true", help="class-agnostic NMS")
    p.add_argument("--pre-nms-topk", type=int, default=0,
                   help="best N candidates into NMS (0: all anchors, exactly the official)")
    p.add_argument("--max-det", type=int, default=0, help="detections kept per image (0: all)")
    p.add_argument("--tsize", type=int, nargs="+", default=None,
                   help="test size: S (square) or H W; default: the config's test_size")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--legacy", action="store_true", help="legacy (pre-0.1.1) normalisation")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--split-timing", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the forward pass alone (one extra compilation)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--output-dir", default=None, help="write the detections json here")
    p.add_argument("--stats-out", default=None, help="write the numbers to this json file")
    return p


def test_size(tsize: list[int] | None, config: Any) -> tuple[int, int]:
    if tsize is None:
        return tuple(int(v) for v in config.data.test_size)
    if len(tsize) == 1:
        return (tsize[0], tsize[0])
    if len(tsize) == 2:
        return (tsize[0], tsize[1])
    raise SystemExit(f"--tsize takes S or H W, got {tsize}")


def read_dataset(args: argparse.Namespace, config: Any):
    from yolox_jax.data import readers
    from yolox_jax.eval.evaluator import read_config_dataset

    names = tuple(n.strip() for n in args.class_names.split(",")) if args.class_names else None
    if args.ann is not None:
        return readers.read_coco(args.data_dir or config.data.data_dir, args.ann, args.images)
    if args.data_dir is not None:
        names = names or tuple(config.data.class_names) or None
        return readers.read_voc(args.data_dir, args.voc_split, names)
    overrides = {"class_names": names} if names else {}
    return read_config_dataset(config, **overrides)


def detections_json(info: Any, dets: list) -> list[dict[str, Any]]:
    """COCO: the results format; VOC: one entry per detection (bbox x1y1x2y2, 0-based pixels)."""
    if info.format == "coco":
        from yolox_jax.eval.coco_eval import to_coco_results

        return to_coco_results(dets, [r.image_id for r in info.records], info.category_ids)
    out = []
    for rec, det in zip(info.records, dets, strict=True):
        for d in det.to_json(info.class_names):
            out.append({"image_id": rec.image_id, **d})
    return out


def print_stats(info: Any, stats: dict[str, Any]) -> None:
    from yolox_jax.eval.coco_eval import STAT_KEYS, format_per_class_table

    if info.format == "coco":
        print(stats["summary"].rstrip())
        print("  ".join(f"{k} {stats[k]:.4f}" for k in STAT_KEYS))
        print("per class AP:\n" + format_per_class_table(stats["per_class_AP"], "AP"))
        print("per class AR:\n" + format_per_class_table(stats["per_class_AR"], "AR"))
    else:
        print(f"VOC ({stats['metric']}): mAP@0.5 {stats['mAP50']:.4f}  "
              f"mAP@0.5:0.95 {stats['mAP50_95']:.4f}")
        print("per class AP@0.5:\n" + format_per_class_table(stats["per_class_AP50"], "AP50"))
    print(f"{stats['num_detections']} detections on {stats['num_images']} images")
    parts = [f"{name} {stats[k]:.2f} ms/image" for name, k in
             (("forward", "forward_ms"), ("NMS", "nms_ms"), ("forward+NMS", "inference_ms"))
             if k in stats]
    if "images_per_s" in stats:
        parts.append(f"{stats['images_per_s']:.1f} images/s end to end")
    print("timing: " + (", ".join(parts) if parts else "too few batches to time"))


def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from yolox_jax.eval.evaluator import evaluate_dataset
    from yolox_jax.export.runtime import OnnxModelError
    from yolox_jax.inference import Predictor, load_model

    try:
        model, variables, config = load_model(args.checkpoint, args.config, backend=args.backend)
    except OnnxModelError as e:
        raise SystemExit(f"evaluate.py: {e}") from None
    info = read_dataset(args, config)
    if args.limit > 0:
        info.records = info.records[: args.limit]
    n_model, n_data = int(model.num_classes), len(info.class_names)
    if n_data > n_model:
        raise SystemExit(f"the dataset has {n_data} classes but the model predicts {n_model}")
    predictor = Predictor(
        model, variables, input_size=test_size(args.tsize, config), conf=args.conf,
        nms=args.nms, class_agnostic=args.class_agnostic,
        pre_nms_topk=args.pre_nms_topk or None, max_det=args.max_det or None,
        legacy=args.legacy or bool(config.data.get("legacy", False)), dtype=args.dtype,
        batch_buckets=(max(1, args.batch_size),),
        num_classes=n_data if n_data < n_model else None, config=config,
    )
    result = evaluate_dataset(predictor, info, batch_size=args.batch_size,
                              progress=args.progress, split_timing=args.split_timing,
                              use_07_metric=args.metric == "voc07")
    stats = result.stats
    print_stats(info, stats)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        path = os.path.join(args.output_dir, f"detections_{info.format}.json")
        with open(path, "w") as f:
            json.dump(detections_json(info, result.detections), f)
        print(f"detections written to {path}")
    if args.stats_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.stats_out)), exist_ok=True)
        with open(args.stats_out, "w") as f:
            json.dump({**stats, "dataset": info.source, "checkpoint": args.checkpoint,
                       "conf": args.conf, "nms": args.nms, "dtype": args.dtype,
                       "input_size": list(predictor.input_size)}, f, indent=2)
        print(f"stats written to {args.stats_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
