"""The official YOLOX-Nano COCO weights: converted without torch, our raw output on the official
demo input agrees with the official torch model and with the official ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import need_shared

from yolox_jax.weights.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def nano():
    return load_checkpoint(need_shared("data/weights/yolox_nano.pth"))


@pytest.fixture(scope="module")
def dog():
    with np.load(need_shared("fixtures/real/dog.npz")) as f:
        return {k: f[k] for k in f.files}


def _abs_rel(a, b):
    d = np.abs(np.asarray(a, np.float64) - b)
    return float(d.max()), float(d.max() / np.abs(b).max())


def test_variant_and_classes_inferred(nano):
    model, _, config = nano
    assert config.name == "yolox_nano" and config.model.num_classes == 80
    assert model.depthwise and model.width == 0.25


def test_raw_output_matches_official_torch_and_onnx(nano, dog):
    model, variables, _ = nano
    x = dog["input_u8"].astype(np.float32).transpose(1, 2, 0)[None]
    raw = np.asarray(model.apply(variables, x, decode=False))
    decoded = np.asarray(model.apply(variables, x))
    torch_raw = np.concatenate([dog["raw_box"], dog["decoded"][..., 4:]], axis=-1)
    abs_t, rel_t = _abs_rel(raw, torch_raw)
    abs_d, rel_d = _abs_rel(decoded, dog["decoded"])
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(
        str(need_shared("data/weights/yolox_nano.onnx")), providers=["CPUExecutionProvider"]
    )
    onnx_raw = sess.run(None, {"images": dog["input_u8"].astype(np.float32)[None]})[0]
    abs_o, rel_o = _abs_rel(raw, onnx_raw)
    gap, _ = _abs_rel(torch_raw, onnx_raw)  # the official torch vs its own ONNX export
    print(f"\nvs torch raw: abs {abs_t:.2e} rel {rel_t:.2e}; decoded: abs {abs_d:.2e} "
          f"rel {rel_d:.2e}; vs ONNX raw: abs {abs_o:.2e} rel {rel_o:.2e}; "
          f"official torch vs ONNX: abs {gap:.2e}")
    # Two float32 implementations: evaluated in float64, these weights give outputs that the
    # official torch misses by 1.0e-4 abs / 2.7e-5 rel and its own ONNX export by 1.7e-4 / 4.7e-5
    # (measured); our eager and jitted forwards land at 6e-5..1.4e-4 / 1.7e-5..3.8e-5 depending
    # on the summation order XLA picks. The bar is that band, not one lucky order.
    assert abs_t < 2e-4 and rel_t < 4e-5
    # ONNX Runtime fuses and reorders differently: no farther from it than twice torch is.
    assert abs_o < 2 * gap and rel_o < 1e-4
    assert rel_d < 2e-5


@pytest.mark.parametrize(
    "name", ["yolox_nano_legacy_format.pth", "yolox_nano_fp16_module_prefix.pth"]
)
def test_other_checkpoint_layouts_load_to_the_same_weights(nano, name):
    _, ref, _ = nano
    _, variables, config = load_checkpoint(need_shared(f"data/weights/{name}"))
    assert config.name == "yolox_nano"
    import jax

    tol = 0 if "legacy" in name else 1e-3
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * 1e-2)
