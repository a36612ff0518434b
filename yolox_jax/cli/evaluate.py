"""`yolox-jax eval` (= `evaluate.py`): score a checkpoint on a COCO, VOC or YOLO dataset, as the
official `tools/eval.py`.

    yolox-jax eval -c yolox_nano.pth --data-dir COCO --ann annotations/instances_val2017.json
    yolox-jax eval -c my_export/ --data-dir VOCdevkit/VOC2007 --voc-split test
    yolox-jax eval -c yolox_nano.pth --shards gs://bucket/coco/val2017   # a packed shard set
    yolox-jax eval -c workdir/ --yaml my_data/data.yaml --split val --plots plots/
    yolox-jax eval -c workdir/ --config configs/yolox_s.py      # the config's data section

Defaults are the official evaluation's: ValTransform at the config's test size, conf 0.001, NMS
0.65 class-aware, every anchor into NMS and every detection kept (`--pre-nms-topk 0
--max-det 0`). `--ann` (relative to `--data-dir`, or under its `annotations/`) means COCO;
`--yaml` (or a `--data-dir` holding a data.yaml) means YOLO, scored as COCO (pycocotools); a
`--data-dir` without `--ann` means VOC; none: the config's `data` section. VOC is scored with
the VOC2007 11-point metric (`--metric area` for the area under the PR curve).
`--plots DIR` writes `PR_curve.png` (precision-recall per class at IoU 0.5) and
`confusion_matrix.png` (detections above `--plot-conf` matched to the ground truth at IoU 0.5).

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
from collections.abc import Sequence
from typing import Any

from yolox_jax.cli import errors
from yolox_jax.cli.common import add_debug_flag, add_tsize_flag, parse_tsize


def make_parser(prog: str = "yolox-jax eval") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=None,
                   help="configs/*.py or a variant name; default: from the checkpoint")
    p.add_argument("--checkpoint", "-c", required=True,
                   help="exported folder, training workdir, official .pth, or .onnx file")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "openvino"), default="auto",
                   help="runtime for a .onnx --checkpoint (auto: onnxruntime, else OpenVINO)")
    p.add_argument("--data-dir", default=None, help="dataset root; default: config data.data_dir")
    p.add_argument("--shards", default=None,
                   help="a packed shard set (folder or URL, yolox-jax pack) instead of "
                        "--data-dir; default: config data.val_shards")
    p.add_argument("--ann", default=None,
                   help="COCO json relative to --data-dir (or its annotations/); omitted: VOC")
    p.add_argument("--images", default=None,
                   help="COCO image folder relative to --data-dir; default: from the json name")
    p.add_argument("--voc-split", default="test", help="VOC ImageSets/Main/<split>.txt")
    p.add_argument("--yaml", default=None, help="YOLO data.yaml (means a YOLO dataset)")
    p.add_argument("--split", default=None,
                   help="YOLO: the data.yaml split (default val); VOC: same as --voc-split")
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
    add_tsize_flag(p)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--legacy", action="store_true", help="legacy (pre-0.1.1) normalisation")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--split-timing", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the forward pass alone (one extra compilation)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--output-dir", default=None, help="write the detections json here")
    p.add_argument("--stats-out", default=None, help="write the numbers to this json file")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write PR_curve.png and confusion_matrix.png here")
    p.add_argument("--plot-conf", type=float, default=0.25,
                   help="score threshold of the confusion matrix's detections")
    add_debug_flag(p)
    return p


def dataset_config(args: argparse.Namespace, config: Any) -> Any:
    """The checkpoint's config with the dataset flags applied to its `data` section: what
    `datasets.read_split(config, "val")` reads."""
    c = config.copy_and_resolve_references()
    d = c.data
    names = tuple(n.strip() for n in args.class_names.split(",")) if args.class_names else ()
    if args.shards is not None:
        d.val_shards = args.shards
        return c
    if args.data_dir is not None or args.ann is not None or args.yaml is not None:
        d.val_shards = ""  # an explicit dataset flag wins over the config's shard set
    if args.data_dir is not None:
        d.data_dir = args.data_dir
    if args.ann is not None:
        d.format, d.val_ann, d.val_images = "coco", args.ann, args.images or ""
    elif args.yaml is not None or (
            args.data_dir is not None and os.path.isfile(os.path.join(args.data_dir, "data.yaml"))):
        d.format, d.yaml = "yolo", args.yaml or ""
        d.yolo_val_split = args.split or "val"
    elif args.data_dir is not None:
        d.format, d.voc_val_split = "voc", args.split or args.voc_split
    elif args.split is not None:
        d[{"voc": "voc_val_split", "yolo": "yolo_val_split"}.get(d.format, "val_ann")] = args.split
    if names:
        d.class_names = names
    if d.format == "coco" and args.ann is None and args.data_dir is None and not d.data_dir:
        raise errors.UsageError("no dataset: pass --data-dir (with --ann for COCO), --yaml, or a "
                                "--config whose data section names one")
    return c


def read_dataset(args: argparse.Namespace, config: Any):
    from yolox_jax.data.datasets import read_split

    return read_split(dataset_config(args, config), "val")


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


def _main(argv: list[str], prog: str) -> int:
    args = make_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    input_size = parse_tsize(args.tsize)  # None: the config's test_size
    if not os.path.exists(args.checkpoint):
        raise errors.UsageError(f"checkpoint {args.checkpoint!r} does not exist")
    if args.plots:
        from yolox_jax import plots

        plots.require_matplotlib()
    from yolox_jax.eval.coco_eval import for_scoring
    from yolox_jax.eval.evaluator import evaluate_dataset
    from yolox_jax.inference import Predictor, load_model

    model, variables, config = load_model(args.checkpoint, args.config, backend=args.backend)
    read = read_dataset(args, config)
    if args.limit > 0:
        read.records = read.records[: args.limit]
    info, coco_gt = for_scoring(read)
    n_model, n_data = int(model.num_classes), len(info.class_names)
    if n_data > n_model:
        raise errors.UsageError(f"{info.source} has {n_data} classes but the model "
                                f"{args.checkpoint} predicts {n_model}")
    # = Predictor.from_checkpoint, split: the dataset (read with the checkpoint's config)
    # decides num_classes
    predictor = Predictor(
        model, variables, config=config, input_size=input_size, conf=args.conf, nms=args.nms,
        class_agnostic=args.class_agnostic, pre_nms_topk=args.pre_nms_topk or None,
        max_det=args.max_det or None, legacy=args.legacy or None, dtype=args.dtype,
        batch_buckets=(max(1, args.batch_size),),
        num_classes=n_data if n_data < n_model else None,
    )
    result = evaluate_dataset(predictor, info, batch_size=args.batch_size,
                              progress=args.progress, split_timing=args.split_timing,
                              use_07_metric=args.metric == "voc07", coco_gt=coco_gt)
    stats = result.stats
    print_stats(info, stats)
    if args.plots:
        written = write_plots(args, info, coco_gt, result.detections)
        print(f"plots written: {', '.join(str(p) for p in written)}")
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


def write_plots(args: argparse.Namespace, info: Any, coco_gt: Any, detections: list) -> list:
    """PR curves per class (COCOeval's arrays for COCO / YOLO, the VOC evaluator's for VOC) and
    the confusion matrix at IoU 0.5, into `args.plots`."""
    from yolox_jax import plots
    from yolox_jax.eval.confusion import confusion_matrix

    if info.format == "coco":
        from yolox_jax.eval.coco_eval import coco_pr_curves, scoring_inputs

        gt, results, image_ids = scoring_inputs(info, detections, coco_gt)
        curves = coco_pr_curves(gt, results, info.class_names, image_ids=image_ids)
    else:
        from yolox_jax.eval.voc_eval import voc_pr_curves

        curves = voc_pr_curves(detections, info.records, info.class_names,
                               use_07_metric=args.metric == "voc07")
    os.makedirs(args.plots, exist_ok=True)
    matrix = confusion_matrix(detections, info.records, len(info.class_names),
                              conf=args.plot_conf)
    return [
        plots.plot_pr_curves(curves, os.path.join(args.plots, "PR_curve.png")),
        plots.plot_confusion_matrix(matrix, info.class_names,
                                    os.path.join(args.plots, "confusion_matrix.png")),
    ]


def main(argv: Sequence[str] | None = None, prog: str = "yolox-jax eval") -> int:
    return errors.run(lambda a: _main(a, prog), argv, prog)


if __name__ == "__main__":
    sys.exit(main())
