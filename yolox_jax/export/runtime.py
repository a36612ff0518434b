"""Run an exported (or official) YOLOX ONNX file: the forward function `images [N, 3, H, W] float32
-> [N, A, 5 + C]` that `Predictor` wraps with the one letterbox and the one postprocess.

A file is accepted when it has one float input [N, 3, H, W] (H, W static multiples of 32, N static
or symbolic) and one float output [N, A, 5 + C] with A the anchor count of (H, W); anything else
(unreadable, another network) is an `OnnxModelError` naming the file. Whether the output is already
decoded comes from our metadata (`yolox_jax.decode_in_inference`), else from the graph: the official
decode (like ours) exponentiates the log sizes, the raw head has no Exp node.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("onnxruntime", "openvino")
META_PREFIX = "yolox_jax."


class OnnxModelError(ValueError):
    """An .onnx file that cannot be read, or is not a YOLOX detector with the official interface."""


def is_onnx_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def _num_anchors(h: int, w: int) -> int:
    return sum((h // s) * (w // s) for s in (8, 16, 32))


def _dims(value_info: Any) -> list[int | str]:
    t = value_info.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def inspect_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a YOLOX ONNX file's interface (no session is created).

    Returns input / output names, input_hw, batch (int, or None when symbolic), num_classes,
    decoded, legacy, metadata (our `yolox_jax.*` entries, prefix stripped), num_nodes.
    """
    try:
        import onnx
    except ImportError:
        raise OnnxModelError(
            "running .onnx files needs the export extra: pip install 'yolox-jax[export]'"
        ) from None
    p = Path(path)
    if not p.is_file():
        raise OnnxModelError(f"ONNX model {str(p)!r} does not exist")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OnnxModelError(f"{p}: not a readable ONNX model ({first})") from None
    g = model.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    what = "not a YOLOX detector with the official interface"
    if len(inputs) != 1 or len(g.output) != 1:
        raise OnnxModelError(
            f"{p}: {what}: expected one input 'images' [N, 3, H, W] and one output 'output' "
            f"[N, A, 5 + C], got inputs {[i.name for i in inputs]} and outputs "
            f"{[o.name for o in g.output]}")
    inp, out = inputs[0], g.output[0]
    ind, outd = _dims(inp), _dims(out)
    float_t = onnx.TensorProto.FLOAT
    if (inp.type.tensor_type.elem_type != float_t or len(ind) != 4 or ind[1] != 3
            or not all(isinstance(d, int) and d > 0 and d % 32 == 0 for d in ind[2:])):
        raise OnnxModelError(
            f"{p}: {what}: input {inp.name!r} is {ind}, expected float32 [N, 3, H, W] with H, W "
            "fixed multiples of 32")
    h, w = int(ind[2]), int(ind[3])
    anchors = _num_anchors(h, w)
    if (out.type.tensor_type.elem_type != float_t or len(outd) != 3 or outd[1] != anchors
            or not isinstance(outd[2], int) or outd[2] < 6):
        raise OnnxModelError(
            f"{p}: {what}: output {out.name!r} is {outd}, expected float32 [N, {anchors}, 5 + C] "
            f"for a {h}x{w} input")
    meta = {m.key[len(META_PREFIX):]: m.value for m in model.metadata_props
            if m.key.startswith(META_PREFIX)}
    if "decode_in_inference" in meta:
        decoded = meta["decode_in_inference"] == "true"
    else:
        decoded = any(n.op_type == "Exp" for n in g.node)
    return dict(
        path=str(p), input_name=inp.name, output_name=out.name, input_hw=(h, w),
        batch=int(ind[0]) if isinstance(ind[0], int) and ind[0] > 0 else None,
        num_classes=int(outd[2]) - 5, decoded=decoded,
        legacy=meta.get("legacy", "false") == "true", metadata=meta, num_nodes=len(g.node),
    )


class OnnxModel:
    """A YOLOX ONNX file on a host runtime: `model(images [n, 3, H, W] float32) -> [n, A, 5 + C]`.

    backend: "onnxruntime", "openvino", or "auto" (onnxruntime if installed, else OpenVINO).
    With a static batch N in the file, `n` must be N (Predictor pads to it). Attributes mirror
    what callers read off a Flax YOLOX: `num_classes`, `dtype`.
    """

    runs_on_host = True
    dtype = np.dtype(np.float32)

    def __init__(self, path: str | os.PathLike, backend: str = "auto",
                 num_threads: int | None = None) -> None:
        info = inspect_onnx(path)
        self.info = info
        self.path = info["path"]
        self.input_name, self.output_name = info["input_name"], info["output_name"]
        self.input_hw = info["input_hw"]
        self.batch = info["batch"]
        self.num_classes = info["num_classes"]
        self.decoded = info["decoded"]
        self.legacy = info["legacy"]
        self.metadata = info["metadata"]
        self.backend = _pick_backend(backend)
        if self.backend == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            # Worker threads spin while a run lasts (a wake-up per node costs ~10% at batch 1)
            # and stop when it returns: spinning between runs competes with the jitted
            # postprocess that follows each run (4x fewer images/s end to end on a loaded
            # 2-core CPU).
            opts.add_session_config_entry("session.force_spinning_stop", "1")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
            if num_threads:
                opts.intra_op_num_threads = int(num_threads)
            try:
                self._session = ort.InferenceSession(
                    self.path, sess_options=opts, providers=["CPUExecutionProvider"])
            except Exception as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise OnnxModelError(f"{self.path}: onnxruntime cannot load it ({first})") from None
            self._run = lambda x: self._session.run([self.output_name], {self.input_name: x})[0]
        else:
            import openvino as ov

            core = ov.Core()
            # f32: OpenVINO's CPU plugin otherwise picks bf16 / f16 where the CPU has them
            # (1e-3 off here); parity with the JAX model and the official numbers comes first.
            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
            if num_threads:
                config["INFERENCE_NUM_THREADS"] = int(num_threads)
            try:
                compiled = core.compile_model(self.path, "CPU", config)
            except Exception as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise OnnxModelError(f"{self.path}: OpenVINO cannot load it ({first})") from None
            self._compiled = compiled
            request = compiled.create_infer_request()
            out_port = compiled.output(0)

            def run(x: np.ndarray) -> np.ndarray:
                request.infer({0: x})
                return np.array(request.get_tensor(out_port).data, copy=True)

            self._run = run

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, *self.input_hw):
            raise ValueError(f"{self.path}: input must be [n, 3, {self.input_hw[0]}, "
                             f"{self.input_hw[1]}] float32, got {x.shape}")
        if self.batch is not None and x.shape[0] != self.batch:
            raise ValueError(f"{self.path}: exported with a static batch of {self.batch}, got "
                             f"{x.shape[0]} images (export with --dynamic for any batch)")
        return self._run(x)

    def __repr__(self) -> str:
        return (f"OnnxModel({self.path!r}, backend={self.backend!r}, input {self.input_hw}, "
                f"batch {self.batch or 'dynamic'}, {self.num_classes} classes, "
                f"{'decoded' if self.decoded else 'raw'} output)")


def _pick_backend(backend: str) -> str:
    import importlib.util

    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown ONNX backend {backend!r}; expected auto, {', '.join(BACKENDS)}")
    have = {b: importlib.util.find_spec(b) is not None for b in BACKENDS}
    if backend == "auto":
        for b in BACKENDS:
            if have[b]:
                return b
        raise OnnxModelError("running .onnx files needs onnxruntime (pip install "
                             "'yolox-jax[export]') or OpenVINO (pip install openvino)")
    if not have[backend]:
        extra = "'yolox-jax[export]'" if backend == "onnxruntime" else "openvino"
        raise OnnxModelError(f"backend {backend!r} is not installed: pip install {extra}")
    return backend


def load_onnx(path: str | os.PathLike, config: Any = None, backend: str = "auto",
              num_threads: int | None = None) -> tuple[OnnxModel, Any]:
    """(OnnxModel, config): the config given, else the one our export stored, else the base
    config with the file's class count and input size (an official file carries none)."""
    from yolox_jax.config import as_config, base_config

    model = OnnxModel(path, backend, num_threads)
    if config is not None:
        cfg = as_config(config).copy_and_resolve_references()
    elif "config" in model.metadata:
        from yolox_jax.config import config_from_json

        cfg = config_from_json(model.metadata["config"])
    else:
        cfg = base_config()
        cfg.name = Path(model.path).stem
    if int(cfg.model.num_classes) != model.num_classes and config is not None:
        raise OnnxModelError(f"{model.path}: predicts {model.num_classes} classes but the config "
                             f"{cfg.name} has {cfg.model.num_classes}")
    cfg.model.num_classes = model.num_classes
    cfg.data.test_size = tuple(model.input_hw)
    if model.legacy:
        cfg.data.legacy = True
    return model, cfg
