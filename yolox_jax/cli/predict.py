"""`yolox-jax predict` (= `demo.py`): detect objects in an image, a folder of images, a video
file or a camera, as the official `tools/demo.py`.

    yolox-jax predict samples/dog.jpg --checkpoint yolox_nano.pth --save-result
    yolox-jax predict my_images/ --checkpoint my_export/ --save-result --output-dir out/
    yolox-jax predict clip.avi --checkpoint yolox_nano.pth --save-result
    yolox-jax predict camera --camid 0 --checkpoint yolox_nano.pth --show    # or: predict 0
    yolox-jax predict image samples/dog.jpg --name yolox_nano -c yolox_nano.pth  # kind given

The kind (image, folder, video, webcam / camera) is guessed from PATH unless given first; a
PATH that is a number and no file is a camera index.

Defaults follow the official demo: `ValTransform` at the config's test size, conf 0.3 and
*class-agnostic* NMS (the official `Predictor.inference` calls `postprocess(...,
class_agnostic=True)`, which is why its dog.jpg result is dog / bicycle / car without the
class-aware "truck"; `--no-class-agnostic` gives class-aware NMS, as the evaluator uses).
NMS 0.45 as in the official README's demo command (the official parser's own default is 0.3).
Boxes are drawn in the official `vis` style, skipping scores below --conf.

With `--save-result`, `--output-dir` receives the annotated image(s) (same relative names), or the
video (same file name and container, mp4v, same frame size, frame count and fps), and a json of the
detections per image / per frame (boxes x1y1x2y2 in source pixels, score, class id and name).
Class names come from the config: `data.class_names`, else COCO's 80 (VOC's 20 for a VOC config).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from yolox_jax.cli import errors
from yolox_jax.cli.common import add_debug_flag, add_tsize_flag, parse_tsize

IMAGE_EXTS = {".jpg", ".jpeg", ".webp", ".bmp", ".png", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
KINDS = ("image", "folder", "video", "webcam", "camera")


class DemoError(errors.UsageError):
    """A bad path or unreadable input (the message says which); `main` exits 2 with it."""


def make_parser(prog: str = "yolox-jax predict") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("demo", nargs="?", default=None, metavar="KIND",
                   help=f"one of {', '.join(KINDS)}; omitted: guessed from PATH")
    p.add_argument("path", nargs="?", default=None, metavar="PATH",
                   help="image, folder of images or video (not for webcam)")
    p.add_argument("--path", dest="path_option", default=None,
                   help="same as PATH (the official demo's spelling)")
    p.add_argument("--camid", type=int, default=0, help="camera index for 'webcam'")
    p.add_argument("--config", default=None,
                   help="configs/*.py or a variant name; default: from the checkpoint")
    p.add_argument("--name", "-n", default=None,
                   help="variant name (yolox_nano, yolox-s, ...), like the official -n")
    p.add_argument("--checkpoint", "--ckpt", "-c", required=True,
                   help="exported folder, training workdir, official .pth, or .onnx file")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "openvino"), default="auto",
                   help="runtime for a .onnx --checkpoint (auto: onnxruntime, else OpenVINO)")
    p.add_argument("--conf", type=float, default=0.3, help="score threshold (obj * cls)")
    p.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold")
    add_tsize_flag(p)
    p.add_argument("--class-agnostic", action=argparse.BooleanOptionalAction, default=True,
                   help="class-agnostic NMS (default, as the official demo)")
    p.add_argument("--legacy", action="store_true", help="legacy (pre-0.1.1) normalisation")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="network compute dtype")
    p.add_argument("--save-result", action="store_true",
                   help="write annotated images / video and the detections json")
    p.add_argument("--output-dir", default="demo_output", help="where --save-result writes")
    p.add_argument("--batch-size", type=int, default=8, help="images / frames per device call")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: all)")
    p.add_argument("--show", action="store_true", help="display results in a window")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_flag(p)
    return p


def resolve_args(args: argparse.Namespace) -> tuple[str, str | None]:
    """(kind, path) from the positionals / --path; the kind guessed from the path if omitted."""
    kind, path = args.demo, args.path
    if kind is not None and kind not in KINDS:
        if path is not None:
            raise DemoError(f"unknown demo kind {kind!r}; expected one of {', '.join(KINDS)}")
        kind, path = None, kind  # `demo.py PATH`
    if args.path_option is not None:
        if path is not None and path != args.path_option:
            raise DemoError(f"two paths given: {path!r} and --path {args.path_option!r}")
        path = args.path_option
    if kind is None and path is not None and path.isdigit() and not Path(path).exists():
        kind, args.camid, path = "webcam", int(path), None  # `predict 0`: camera 0
    if kind in ("webcam", "camera"):
        return "webcam", None
    if path is None:
        raise DemoError(f"{kind or 'demo'}: give a PATH (image, folder of images or video)")
    p = Path(path)
    if not p.exists():
        raise DemoError(f"path {path!r} does not exist")
    if kind is None:
        if p.is_dir():
            return "folder", path
        ext = p.suffix.lower()
        if ext in IMAGE_EXTS:
            return "image", path
        if ext in VIDEO_EXTS:
            return "video", path
        raise DemoError(
            f"cannot tell whether {path!r} is an image or a video (extension {ext!r}); "
            "pass the kind: image, folder or video"
        )
    if kind == "folder" and not p.is_dir():
        raise DemoError(f"folder: {path!r} is not a directory")
    if kind in ("image", "video") and not p.is_file():
        if kind == "image" and p.is_dir():
            return "folder", path  # the official `image` demo takes folders too
        raise DemoError(f"{kind}: {path!r} is not a file")
    return kind, path


def list_images(path: str) -> list[Path]:
    """A file, or every image under a folder (recursive, sorted as the official demo)."""
    p = Path(path)
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
    if not files:
        raise DemoError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {path!r}")
    return files


def build_predictor(args: argparse.Namespace) -> tuple[Any, tuple[str, ...]]:
    """Load the checkpoint and wrap it; -> (Predictor, class names)."""
    from yolox_jax.data.classes import class_names_for
    from yolox_jax.inference import Predictor

    if args.config is not None and args.name is not None:
        raise DemoError("give --config or --name, not both")
    predictor = Predictor.from_checkpoint(
        args.checkpoint, args.config or args.name, backend=args.backend,
        input_size=parse_tsize(args.tsize), conf=args.conf, nms=args.nms,
        class_agnostic=args.class_agnostic, legacy=args.legacy or None, dtype=args.dtype,
        batch_buckets=(1, max(1, int(args.batch_size))),
    )
    d = predictor.config.data
    names = class_names_for(tuple(d.get("class_names", ())), int(predictor.model.num_classes),
                            str(d.get("format", "coco")))
    return predictor, names


def annotate(img: Any, det: Any, names: Sequence[str], conf: float) -> Any:
    """A copy of `img` with the detections drawn (official `vis`, scores below conf skipped)."""
    from yolox_jax.visualize import draw_detections

    return draw_detections(img.copy(), det.boxes, det.scores, det.classes, names, conf)


def summary(det: Any, names: Sequence[str]) -> str:
    return ", ".join(
        f"{names[int(c)] if 0 <= int(c) < len(names) else int(c)} {s:.3f}"
        for c, s in zip(det.classes, det.scores, strict=True)
    ) or "(none)"


def _progress(iterable: Any, total: int | None, unit: str, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, total=total, unit=unit, disable=disable, dynamic_ncols=True)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def image_demo(args: argparse.Namespace, path: str, predictor: Any,
               names: Sequence[str]) -> dict[str, Any]:
    """Detect on one image or every image of a folder; -> {relative name: {size, detections}}.

    A single unreadable image is an error; in a folder it is reported, skipped and listed under
    "unreadable" in the json.
    """
    import cv2
    from tqdm import tqdm

    from yolox_jax.data.io import UnreadableImageError, read_image

    root = Path(path)
    files = list_images(path)
    single = root.is_file()
    out_dir = Path(args.output_dir)
    results: dict[str, Any] = {}
    unreadable: list[str] = []
    bar = _progress(None, len(files), "img", args.no_progress or single)
    stop = False
    for chunk in _chunks(files, max(1, args.batch_size)):
        images, rels = [], []
        for f in chunk:
            rel = f.name if single else f.relative_to(root).as_posix()
            try:
                images.append(read_image(f))
                rels.append(rel)
            except UnreadableImageError as e:
                if single:
                    raise DemoError(str(e)) from None
                tqdm.write(f"skipped: {e}")
                unreadable.append(rel)
        dets = predictor(images) if images else []
        for rel, img, det in zip(rels, images, dets, strict=True):
            tqdm.write(f"{rel}: {len(det)} detections: {summary(det, names)}")
            results[rel] = {"height": int(img.shape[0]), "width": int(img.shape[1]),
                            "detections": det.to_json(names)}
            vis = annotate(img, det, names, args.conf)
            if args.save_result:
                target = out_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(target), vis):
                    raise DemoError(f"could not write {target}")
            if args.show and _show(vis, wait_ms=0):
                stop = True
                break
        bar.update(len(chunk))
        if stop:
            break
    bar.close()
    output: dict[str, Any] = {"images": results}
    if unreadable:
        output["unreadable"] = unreadable
    if args.save_result:
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / (f"{root.stem}.json" if single else "detections.json")
        target.write_text(json.dumps(output, indent=1))
        print(f"saved {len(results)} annotated image(s) and {target}")
    return output


def _frames(cap: Any, max_frames: int, batch: int) -> Iterator[list[Any]]:
    """Batches of frames read from a cv2.VideoCapture (up to max_frames in all, 0 = all)."""
    count = 0
    while True:
        frames = []
        while len(frames) < batch and (max_frames <= 0 or count < max_frames):
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
            count += 1
        if not frames:
            return
        yield frames


def _open_writer(target: Path, fps: float, size: tuple[int, int]) -> tuple[Any, Path]:
    """cv2.VideoWriter with mp4v in the input's container (as the official), else in .mp4."""
    import cv2

    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    for path in dict.fromkeys([target, target.with_suffix(".mp4")]):
        writer = cv2.VideoWriter(str(path), fourcc, fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
    raise DemoError(f"could not open a video writer (mp4v) for {target}")


def video_demo(args: argparse.Namespace, kind: str, path: str | None, predictor: Any,
               names: Sequence[str]) -> dict[str, Any]:
    """Detect on every frame of a video / camera; -> {source, fps, size, frames: [...]}."""
    import cv2

    source: int | str = args.camid if kind == "webcam" else str(path)
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        what = f"camera {source}" if kind == "webcam" else f"video {source!r}"
        raise DemoError(f"could not open {what} (missing device, or not a video OpenCV reads)")
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 30.0  # cameras may report 0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else 0
    if args.max_frames > 0:
        total = min(total, args.max_frames) if total > 0 else args.max_frames
    out_dir = Path(args.output_dir)
    stem = Path(source).stem if kind == "video" else "camera"
    writer = video_path = None
    batch = 1 if kind == "webcam" else max(1, args.batch_size)
    frames_json: list[dict[str, Any]] = []
    bar = _progress(None, total or None, "frame", args.no_progress)
    t_start = time.perf_counter()
    n = 0
    try:
        for frames in _frames(cap, args.max_frames, batch):
            if writer is None and args.save_result:
                out_dir.mkdir(parents=True, exist_ok=True)
                name = Path(source).name if kind == "video" else "camera.mp4"
                height, width = frames[0].shape[:2]  # what the writer must get, frame for frame
                writer, video_path = _open_writer(out_dir / name, fps, (width, height))
            dets = predictor(frames)
            stop = False
            for frame, det in zip(frames, dets, strict=True):
                frames_json.append({"frame": n, "detections": det.to_json(names)})
                n += 1
                vis = annotate(frame, det, names, args.conf)
                if writer is not None:
                    writer.write(vis)
                if args.show and _show(vis, wait_ms=1):
                    stop = True
                    break
            bar.update(len(frames))
            if stop:
                break
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    if n == 0:
        raise DemoError(f"no frame could be read from {source!r}")
    elapsed = time.perf_counter() - t_start
    print(f"{n} frames in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.1f} frames/s, "
          f"{width}x{height} at {fps:g} fps)")
    result = {"source": str(source), "fps": fps, "width": width, "height": height,
              "num_frames": n, "frames": frames_json}
    if args.save_result:
        json_path = out_dir / f"{stem}.json"
        json_path.write_text(json.dumps(result, indent=1))
        print(f"saved {video_path} and {json_path}")
    return result



def _show(vis: Any, wait_ms: int) -> bool:
    """Display one annotated image; True when the user pressed Esc or q (stop)."""
    import cv2

    cv2.imshow("yolox", vis)
    return cv2.waitKey(wait_ms) in (27, ord("q"), ord("Q"))


def run(argv: Sequence[str] | None = None, prog: str = "yolox-jax predict") -> dict[str, Any]:
    """Run the demo; returns the detections (the json content) for callers and tests. Bad input
    raises DemoError (or another of the project's errors) before any model is loaded."""
    args = make_parser(prog).parse_args(argv)
    parse_tsize(args.tsize)  # a bad --tsize fails before anything is read
    kind, path = resolve_args(args)
    if kind in ("image", "folder"):  # fail on bad input before loading any model
        files = list_images(path)
        if kind == "image" and len(files) == 1:
            from yolox_jax.data.io import UnreadableImageError, read_image

            try:
                read_image(files[0])
            except UnreadableImageError as e:
                raise DemoError(str(e)) from None
    if not os.path.exists(args.checkpoint):
        raise DemoError(f"checkpoint {args.checkpoint!r} does not exist")
    predictor, names = build_predictor(args)
    try:
        if kind in ("image", "folder"):
            return image_demo(args, path, predictor, names)
        return video_demo(args, kind, path, predictor, names)
    finally:
        predictor.close()


def main(argv: Sequence[str] | None = None, prog: str = "yolox-jax predict") -> int:
    """`yolox-jax predict ...` -> exit code (2 with one line on stderr for bad input)."""
    def command(args: list[str]) -> int:
        run(args, prog)
        return 0

    return errors.run(command, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
