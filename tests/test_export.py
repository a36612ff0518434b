"""ONNX export (traced Flax model, official interface) and the onnxruntime / OpenVINO backends.

Variant checks use the fixtures' deterministic weights (calibrated BN statistics) at 64x64; the
real-weights checks use the shared official Nano .pth and the official ONNX export of it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import need_shared
from fixture_weights import fixture_state_dict

onnx = pytest.importorskip("onnx", reason="the export extra (pip install '.[export]') is needed")
ort = pytest.importorskip("onnxruntime", reason="the export extra provides onnxruntime")

from yolox_jax.cli.export import main  # noqa: E402
from yolox_jax.config import VARIANTS, variant_config  # noqa: E402
from yolox_jax.export.exporter import export_onnx  # noqa: E402
from yolox_jax.export.fold import fold_batchnorm, is_folded  # noqa: E402
from yolox_jax.export.onnx import UnsupportedPrimitiveError, node_counts, to_onnx  # noqa: E402
from yolox_jax.export.runtime import OnnxModel, OnnxModelError, inspect_onnx  # noqa: E402
from yolox_jax.inference import Predictor  # noqa: E402
from yolox_jax.models.yolox import build_model  # noqa: E402
from yolox_jax.weights.checkpoint import save_checkpoint  # noqa: E402
from yolox_jax.weights.convert import from_torch_state_dict  # noqa: E402

SIZE = 64


@functools.lru_cache(maxsize=2)
def _fixture_model(variant: str):
    """(model, variables, config) with the fixtures' weights (cached: tests must not mutate)."""
    config = variant_config(variant)
    variables = from_torch_state_dict(fixture_state_dict(variant), config)
    return build_model(config), variables, config


def _session(proto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _images(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """[n, size, size, 3] float32 BGR 0..255 (NHWC, for the JAX model)."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| relative to the output's scale (max |ref|)."""
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


# ------------------------------------------------------------------------------ folding
def test_fold_batchnorm_is_exact_and_pure():
    model, variables, _ = _fixture_model("yolox_nano")
    before = jax.tree.map(np.copy, variables)
    folded = fold_batchnorm(variables, model)
    assert set(folded) == {"params"} and is_folded(folded) and not is_folded(variables)
    stem = folded["params"]["backbone"]["backbone"]["stem"]["conv"]
    assert set(stem) == {"conv"} and set(stem["conv"]) == {"kernel", "bias"}
    jax.tree.map(np.testing.assert_array_equal, variables, before)  # input untouched
    # the fold itself, on one layer: kernel * s, bias - mean * s with s = gamma / sqrt(var + eps)
    p = variables["params"]["backbone"]["backbone"]["stem"]["conv"]
    bs = variables["batch_stats"]["backbone"]["backbone"]["stem"]["conv"]["bn"]
    s = p["bn"]["scale"] / np.sqrt(bs["var"].astype(np.float64) + model.bn_eps)
    np.testing.assert_allclose(stem["conv"]["kernel"], p["conv"]["kernel"] * s, rtol=1e-6)
    np.testing.assert_allclose(stem["conv"]["bias"], p["bn"]["bias"] - bs["mean"] * s,
                               rtol=1e-6, atol=1e-7)
    x = jnp.asarray(_images(2))
    ref = np.asarray(model.apply(variables, x, train=False))
    out = np.asarray(model.apply(folded, x, train=False))  # the same modules run folded weights
    assert _rel(out, ref) < 1e-5
    with pytest.raises(ValueError, match="inference only"):
        model.apply(folded, x, train=True)
    with pytest.raises(ValueError, match="no conv \\+ BatchNorm"):
        fold_batchnorm(folded, model)


def test_predictor_with_folded_bn_gives_the_same_detections():
    model, variables, config = _fixture_model("yolox_nano")
    imgs = [np.random.default_rng(i).integers(0, 256, (70, 90, 3), np.uint8) for i in range(2)]
    kw = dict(input_size=(SIZE, SIZE), conf=0.01, batch_buckets=(2,), config=config)
    a = Predictor(model, variables, **kw)(imgs)
    b = Predictor(model, variables, fold_bn=True, **kw)(imgs)
    for da, db in zip(a, b, strict=True):
        assert len(da) == len(db) > 0
        np.testing.assert_array_equal(da.classes, db.classes)
        np.testing.assert_allclose(da.boxes, db.boxes, atol=1e-3)


# ------------------------------------------------------------------------------ every variant
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_exports_and_onnxruntime_matches_jax(variant):
    model, variables, config = _fixture_model(variant)
    x = _images(3)
    ref = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False, decode=False))(
        variables, x))
    static = export_onnx(model, variables, config, input_size=(SIZE, SIZE), batch=3)
    dynamic = export_onnx(model, variables, config, input_size=(SIZE, SIZE), dynamic=True)
    for proto, batch_dim in ((static, 3), (dynamic, "batch")):
        onnx.checker.check_model(proto)
        g = proto.graph
        assert [i.name for i in g.input] == ["images"] and [o.name for o in g.output] == ["output"]
        dims = [d.dim_value or d.dim_param for d in g.input[0].type.tensor_type.shape.dim]
        assert dims == [batch_dim, 3, SIZE, SIZE]
        out = _session(proto).run(None, {"images": _nchw(x)})[0]
        assert out.shape == ref.shape == (3, 84, 5 + 80)
        assert _rel(out, ref) < 1e-4, (variant, batch_dim, _rel(out, ref))
        counts = node_counts(proto)
        # NCHW throughout: one Transpose (the head's [N, 85, A] -> [N, A, 85]), no BN left
        assert counts["Transpose"] == 1 and "BatchNormalization" not in counts
        assert counts["Conv"] == sum(1 for n in g.node if n.op_type == "Conv" and len(n.input) == 3)
    out1 = _session(dynamic).run(None, {"images": _nchw(x[:1])})[0]  # any batch size
    assert _rel(out1, ref[:1]) < 1e-4


def test_decode_in_inference_matches_jax_decoded_output():
    model, variables, config = _fixture_model("yolox_tiny")
    x = _images(2, 96)
    ref = np.asarray(model.apply(variables, jnp.asarray(x), train=False, decode=True))
    proto = export_onnx(model, variables, config, input_size=(96, 96), dynamic=True,
                        decode_in_inference=True)
    out = _session(proto).run(None, {"images": _nchw(x)})[0]
    assert _rel(out, ref) < 1e-4
    np.testing.assert_allclose(out[..., :4], ref[..., :4], rtol=1e-4, atol=1e-3)  # pixels


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_supported_opsets_run_in_onnxruntime(opset):
    model, variables, config = _fixture_model("yolox_darknet53")  # LeakyRelu at every opset
    x = _images(1)
    ref = np.asarray(model.apply(variables, jnp.asarray(x), train=False, decode=False))
    proto = export_onnx(model, variables, config, input_size=(SIZE, SIZE), opset=opset)
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == opset
    assert node_counts(proto)["LeakyRelu"] == 85
    assert _rel(_session(proto).run(None, {"images": _nchw(x)})[0], ref) < 1e-4


def test_unknown_primitive_is_named():
    with pytest.raises(UnsupportedPrimitiveError, match="cumsum"):
        to_onnx(lambda x: jnp.cumsum(x, axis=1), (SIZE, SIZE))


# ------------------------------------------------------------------------------ real weights
@pytest.fixture(scope="module")
def nano_onnx(tmp_path_factory) -> Path:
    pth = need_shared("data/weights/yolox_nano.pth")
    out = tmp_path_factory.mktemp("onnx") / "yolox_nano.onnx"
    assert main(["--config", "configs/yolox_nano.py", "--checkpoint", str(pth),
                 "--output", str(out)]) == 0
    return out


def test_shared_nano_export_matches_the_official_onnx(nano_onnx):
    official_path = need_shared("data/weights/yolox_nano.onnx")
    with np.load(need_shared("fixtures/real/dog.npz")) as f:
        x = f["input_u8"].astype(np.float32)[None]  # the official ValTransform of dog.jpg
    ours, official = onnx.load(str(nano_onnx)), onnx.load(str(official_path))
    for m in (ours, official):
        assert [i.name for i in m.graph.input] == ["images"]
        assert [o.name for o in m.graph.output] == ["output"]
    a = ort.InferenceSession(str(nano_onnx)).run(None, {"images": x})[0]
    b = ort.InferenceSession(str(official_path)).run(None, {"images": x})[0]
    assert a.shape == b.shape == (1, 3549, 85)
    err = float(np.abs(a - b).max())
    n_ours, n_official = len(ours.graph.node), len(official.graph.node)
    print(f"\nours vs official ONNX on dog.jpg: max abs {err:.2e}; nodes {n_ours} vs "
          f"{n_official} official; {dict(node_counts(ours))}")
    assert err < 5e-4
    assert n_ours <= 1.5 * n_official


def test_onnx_predictor_reproduces_the_official_detections(nano_onnx):
    """Our export and the official file, through Predictor (onnxruntime + the one postprocess),
    give the official postprocess result on dog.jpg (class-aware, conf 0.3, NMS 0.45)."""
    image = need_shared("data/samples/images/dog.jpg")
    with np.load(need_shared("fixtures/real/dog.npz")) as f:
        want = f["post_c0.3_n0.45_div_ratio"]  # [4, 7]: dog, bicycle, car, truck
    for path in (nano_onnx, need_shared("data/weights/yolox_nano.onnx")):
        p = Predictor.from_checkpoint(path, conf=0.3, nms=0.45)
        assert p.host and p.input_size == (416, 416)
        (det,) = p([image])
        rows = det.rows()
        assert rows.shape == want.shape, path
        np.testing.assert_array_equal(rows[:, 6], want[:, 6])
        np.testing.assert_allclose(rows[:, :4], want[:, :4], atol=0.05)
        np.testing.assert_allclose(rows[:, 4:6], want[:, 4:6], atol=1e-4)
    info = inspect_onnx(nano_onnx)
    assert info["decoded"] is False and info["batch"] == 1 and info["num_classes"] == 80
    assert inspect_onnx(need_shared("data/weights/yolox_nano.onnx"))["decoded"] is False


def test_onnx_predictor_matches_the_jax_predictor_static_and_dynamic(tmp_path):
    model, variables, config = _fixture_model("yolox_s")
    imgs = [np.random.default_rng(i).integers(0, 256, (50 + 9 * i, 80, 3), np.uint8)
            for i in range(5)]
    kw = dict(conf=0.01, nms=0.45, batch_buckets=(4,))
    ref = Predictor(model, variables, input_size=(SIZE, SIZE), config=config, **kw)(imgs)
    for name, extra in (("static.onnx", dict(batch=1)), ("dynamic.onnx", dict(dynamic=True)),
                        ("decoded.onnx", dict(dynamic=True, decode_in_inference=True))):
        path = tmp_path / name
        path.write_bytes(export_onnx(model, variables, config, input_size=(SIZE, SIZE),
                                     **extra).SerializeToString())
        p = Predictor.from_checkpoint(path, **kw)
        assert p.buckets == ((1,) if "batch" in extra else (4,))
        got = p(imgs)
        for r, g in zip(ref, got, strict=True):
            assert len(r) == len(g) > 0, name
            # near-equal scores of random weights may swap places: compare as sets of rows
            a, b = (rows[np.lexsort(np.round(rows[:, [3, 2, 1, 0, 6]], 2).T)]
                    for rows in (r.rows(), g.rows()))
            np.testing.assert_array_equal(a[:, 6], b[:, 6])
            np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                    reason="OpenVINO is optional (pip install openvino) and not installed")
def test_openvino_backend_matches_onnxruntime(tmp_path):
    model, variables, config = _fixture_model("yolox_nano")
    path = tmp_path / "nano.onnx"
    path.write_bytes(export_onnx(model, variables, config, input_size=(SIZE, SIZE),
                                 dynamic=True).SerializeToString())
    x = _nchw(_images(2))
    a = OnnxModel(path, "onnxruntime")(x)
    b = OnnxModel(path, "openvino")(x)
    assert _rel(b, a) < 1e-4


# ------------------------------------------------------------------------------ bad input
def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_export_cli_rejects_bad_input_with_one_line(tmp_path, capsys):
    model, variables, config = _fixture_model("yolox_nano")
    ckpt = save_checkpoint(tmp_path / "nano_ckpt", variables, config)
    out = str(tmp_path / "m.onnx")
    base = ["--checkpoint", str(ckpt), "--output", out]
    assert "--tsize 400 is not a multiple of 32" in _error(capsys, [*base, "--tsize", "400"])
    assert "--opset 9 is not supported" in _error(capsys, [*base, "--opset", "9"])
    assert "--opset 99 is not supported" in _error(capsys, [*base, "--opset", "99"])
    err = _error(capsys, [*base, "--config", "configs/yolox_s.py"])
    assert str(ckpt) in err and "yolox_s" in err
    err = _error(capsys, ["--checkpoint", str(tmp_path / "missing.pth"), "--output", out])
    assert "missing.pth" in err
    (tmp_path / "x.onnx").write_bytes(b"\x00")
    err = _error(capsys, ["--checkpoint", str(tmp_path / "x.onnx"), "--output", out])
    assert "x.onnx" in err and "ONNX file" in err
    assert not Path(out).exists()
    assert main([*base, "--tsize", "96", "--dynamic"]) == 0  # the same checkpoint exports
    assert inspect_onnx(out)["batch"] is None and inspect_onnx(out)["input_hw"] == (96, 96)


def test_official_pth_of_another_variant_is_named(tmp_path, capsys):
    pth = need_shared("data/weights/yolox_nano.pth")
    err = _error(capsys, ["--config", "configs/yolox_s.py", "--checkpoint", str(pth),
                          "--output", str(tmp_path / "m.onnx")])
    assert "yolox_nano" in err and "yolox_s" in err


def test_unreadable_or_foreign_onnx_is_named(tmp_path):
    from onnx import TensorProto, helper

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \xff\xfe")
    with pytest.raises(OnnxModelError, match="garbage.onnx: not a readable ONNX model"):
        Predictor.from_checkpoint(garbage)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])])
    foreign = tmp_path / "classifier.onnx"
    foreign.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(OnnxModelError, match="classifier.onnx: not a YOLOX detector"):
        Predictor.from_checkpoint(foreign)
    with pytest.raises(OnnxModelError, match="does not exist"):
        Predictor.from_checkpoint(tmp_path / "absent.onnx")


def test_demo_and_evaluate_take_an_onnx_checkpoint(nano_onnx, tmp_path, capsys):
    from yolox_jax.cli import evaluate, predict

    image = need_shared("data/samples/images/dog.jpg")
    out = predict.run(["image", str(image), "--checkpoint", str(nano_onnx), "--no-progress"])
    dets = out["images"]["dog.jpg"]["detections"]
    assert [(d["class"], round(d["score"], 3)) for d in dets] == [
        ("dog", 0.855), ("bicycle", 0.803), ("car", 0.798)]
    coco = need_shared("data/coco_subset")
    stats = tmp_path / "stats.json"
    assert evaluate.main(["--checkpoint", str(nano_onnx), "--data-dir", str(coco), "--ann",
                          "annotations/instances_val2017_subset.json", "--limit", "8",
                          "--no-progress", "--no-split-timing", "--stats-out", str(stats)]) == 0
    import json

    s = json.loads(stats.read_text())
    assert s["num_images"] == 8 and s["num_detections"] > 0 and 0 < s["AP"] <= 1
    (tmp_path / "bad.onnx").write_bytes(b"\x01\x02")
    capsys.readouterr()
    assert predict.main(["image", str(image), "--checkpoint", str(tmp_path / "bad.onnx")]) == 2
    assert evaluate.main(["--checkpoint", str(tmp_path / "bad.onnx"), "--data-dir", str(coco),
                          "--ann", "annotations/instances_val2017_subset.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("bad.onnx: not a readable ONNX model" in e for e in err), err
    assert not any("Traceback" in e for e in err)
