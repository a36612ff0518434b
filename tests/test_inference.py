"""Letterbox and the jitted Predictor against the official `ValTransform` / `tools/demo.py` path.

The letterbox is checked against a direct re-derivation of the official `preproc` formula and
against the official pixels in the shared fixtures; the Predictor against the official detections
of the real YOLOX-Nano weights on dog.jpg (`fixtures/real/dog.npz`), plus its fixed-shape
contract: bucketed batch sizes and traced thresholds never recompile.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from conftest import need_shared

from yolox_jax.data.classes import COCO_CLASSES
from yolox_jax.data.io import UnreadableImageError, read_image
from yolox_jax.data.transforms import legacy_normalize, letterbox, letterbox_ratio, val_preprocess
from yolox_jax.inference import CandidateOverflowWarning, Predictor
from yolox_jax.models.yolox import build_model


def official_preproc(img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The official `preproc(img, size, swap=(0, 1, 2))` formula, written out again (HWC uint8)."""
    padded = np.ones((size[0], size[1], 3), dtype=np.uint8) * 114
    r = min(size[0] / img.shape[0], size[1] / img.shape[1])
    resized = cv2.resize(
        img, (int(img.shape[1] * r), int(img.shape[0] * r)), interpolation=cv2.INTER_LINEAR
    ).astype(np.uint8)
    padded[: int(img.shape[0] * r), : int(img.shape[1] * r)] = resized
    return padded, r


def official_legacy(padded_hwc: np.ndarray) -> np.ndarray:
    """Official `ValTransform(legacy=True)` arithmetic on the CHW float32 array, in place."""
    img = np.ascontiguousarray(padded_hwc.transpose(2, 0, 1), dtype=np.float32)
    img = img[::-1, :, :].copy()
    img /= 255.0
    img -= np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    img /= np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    return img.transpose(1, 2, 0)


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------- letterbox


@pytest.mark.parametrize(
    "hw, size",
    [
        ((37, 53), (64, 96)),  # upscaling, non-square canvas
        ((300, 100), (64, 96)),  # tall image: height-limited
        ((100, 300), (96, 64)),  # wide image: width-limited
        ((480, 640), (416, 416)),
        ((64, 96), (64, 96)),  # r == 1
        ((13, 200), (128, 128)),  # extreme aspect ratio, 8.32 px high
        ((333, 333), (224, 320)),
    ],
)
def test_letterbox_matches_official_formula(hw, size):
    img = _image(np.random.default_rng(hw[0] * 1000 + hw[1]), *hw)
    ours, r = letterbox(img, size)
    ref, r_ref = official_preproc(img, size)
    assert ours.dtype == np.uint8 and ours.shape == (*size, 3)
    np.testing.assert_array_equal(ours, ref)
    assert r == r_ref == letterbox_ratio(hw, size)
    np.testing.assert_array_equal(val_preprocess(img, size), ref.astype(np.float32))


def test_legacy_normalisation_bit_identical():
    img = _image(np.random.default_rng(5), 50, 70)
    padded, _ = official_preproc(img, (64, 96))
    ours = val_preprocess(img, (64, 96), legacy=True)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, official_legacy(padded))
    np.testing.assert_array_equal(legacy_normalize(padded), ours)


def test_letterbox_official_dog_pixels():
    fx = np.load(need_shared("fixtures/augment/augment.npz"))
    dog = read_image(need_shared("data/samples/images/dog.jpg"))
    assert dog.shape == tuple(fx["source_image_shape"])
    for key in ("416x416", "640x640"):
        size = tuple(int(v) for v in key.split("x"))
        ours, r = letterbox(dog, size)
        np.testing.assert_array_equal(ours, fx[f"preproc_{key}_hwc_u8"])
        assert r == float(fx[f"preproc_{key}_ratio"])
    ours, r = letterbox(dog, (480, 640))  # stored as the top 480 rows of the 640x640 one
    assert str(fx["preproc_480x640_is_topleft_crop_of"]) == "preproc_640x640_hwc_u8"
    np.testing.assert_array_equal(ours, fx["preproc_640x640_hwc_u8"][:480])
    assert r == float(fx["preproc_480x640_ratio"])


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(UnreadableImageError, match="nope.jpg.*does not exist"):
        read_image(tmp_path / "nope.jpg")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(UnreadableImageError, match="broken.png.*cannot be decoded"):
        read_image(bad)
    with pytest.raises(UnreadableImageError, match="is not a file"):
        read_image(tmp_path)


# ------------------------------------------------------------ Predictor, generated weights


@pytest.fixture(scope="module")
def random_nano():
    """yolox_nano with the fixtures' generated weights (cheap: no jitted init)."""
    from fixture_weights import fixture_state_dict

    from yolox_jax.config import variant_config
    from yolox_jax.weights.convert import from_torch_state_dict

    config = variant_config("yolox_nano")
    return build_model(config), from_torch_state_dict(fixture_state_dict("yolox_nano"), config)


def test_buckets_thresholds_and_mixed_sizes(random_nano):
    """New batch sizes within a bucket and new thresholds reuse one executable; a batch of
    mixed image sizes gives exactly the one-by-one results; outputs are padded, fixed-shape."""
    model, variables = random_nano
    # conf 0: every anchor is a candidate (126 at 64x96), so pre_nms_topk / max_det both cut
    p = Predictor(model, variables, input_size=(64, 96), conf=0.0, nms=0.45,
                  pre_nms_topk=16, max_det=4, batch_buckets=(1, 4))
    rng = np.random.default_rng(0)
    sizes = [(40, 50), (64, 96), (120, 90), (30, 200), (64, 64), (97, 33)]
    imgs = [_image(rng, h, w) for h, w in sizes]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batched = p(imgs)  # 6 images: chunks of 4 + 2, both padded to the bucket of 4
    messages = [str(w.message) for w in caught if w.category is CandidateOverflowWarning]
    assert len(messages) == 2
    assert "6 of 6 images had more than pre_nms_topk=16" in messages[0]
    assert "6 of 6 images kept more than max_det=4" in messages[1]
    assert p.cache_size() == 1 and len(batched) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CandidateOverflowWarning)
        assert len(p(imgs[:3])) == 3
        p(imgs[:2], conf=0.5, nms=0.3)  # traced thresholds
        assert p.cache_size() == 1
        single = [p(img)[0] for img in imgs]
        assert p.cache_size() == 2  # + the bucket of 1
    for s, b, hw in zip(single, batched, sizes, strict=True):
        assert b.image_hw == s.image_hw == hw
        assert b.ratio == s.ratio == min(64 / hw[0], 96 / hw[1])
        assert b.num_candidates == 126 and b.num_kept > 4 and len(b) == 4
        for field in ("boxes", "scores", "classes", "obj", "cls_conf"):
            np.testing.assert_array_equal(getattr(b, field), getattr(s, field))
    # every image was counted as cut, but for the 2 at conf 0.5 (scores here are ~0.31)
    assert p.images_seen == 17 and p.images_over_topk == 15
    x, ratio, _ = p.preprocess(imgs[0])
    det = p.run_batch(x[None], np.array([ratio]))
    assert det.boxes.shape == (1, 4, 4) and det.scores.shape == (1, 4)
    assert det.num_valid.shape == (1,) and int(det.num_valid[0]) == 4
    p.close()


def test_predictor_input_errors(random_nano, tmp_path):
    model, variables = random_nano
    with pytest.raises(ValueError, match="multiples of 32"):
        Predictor(model, variables, input_size=(100, 100))
    p = Predictor(model, variables, input_size=(64, 64))
    with pytest.raises(UnreadableImageError, match="missing.jpg"):
        p([tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match="uint8"):
        p([np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(ValueError, match=r"inputs must be \[n, 64, 64, 3\]"):
        p.run_batch(np.zeros((1, 32, 32, 3), np.uint8), np.ones(1))
    with pytest.raises(ValueError, match="num_classes"):
        Predictor(model, variables, num_classes=81)


def test_legacy_predictor_input(random_nano):
    model, variables = random_nano
    img = _image(np.random.default_rng(1), 70, 45)
    p = Predictor(model, variables, input_size=(64, 96), legacy=True)
    x, ratio, hw = p.preprocess(img)
    padded, r = official_preproc(img, (64, 96))
    np.testing.assert_array_equal(x, official_legacy(padded))
    assert ratio == r and hw == (70, 45)


# ----------------------------------------------------------------- Predictor, real weights


@pytest.fixture(scope="module")
def nano():
    from yolox_jax.weights.checkpoint import load_checkpoint

    return load_checkpoint(need_shared("data/weights/yolox_nano.pth"))


@pytest.fixture(scope="module")
def dog_fx():
    with np.load(need_shared("fixtures/real/dog.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def dog_path():
    return need_shared("data/samples/images/dog.jpg")


def _assert_official_rows(det, ref, box_atol=1e-3):
    """Our ImageDetections vs the official `postprocess` rows [K, 7] (boxes / ratio)."""
    rows = det.rows()
    assert rows.shape == ref.shape, (rows.shape, ref.shape)
    np.testing.assert_array_equal(rows[:, 6], ref[:, 6])  # classes, same order
    np.testing.assert_allclose(rows[:, :4], ref[:, :4], atol=box_atol, rtol=0)
    np.testing.assert_allclose(rows[:, 4:6], ref[:, 4:6], atol=2e-5, rtol=0)
    np.testing.assert_allclose(det.scores, ref[:, 4] * ref[:, 5], atol=2e-5, rtol=0)


def test_dog_class_aware_matches_official(nano, dog_fx, dog_path):
    model, variables, config = nano
    p = Predictor(model, variables, conf=0.3, nms=0.45, config=config, batch_buckets=(1,))
    assert p.input_size == (416, 416) and not p.class_agnostic  # class-aware by default
    x, ratio, hw = p.preprocess(dog_path)  # the official network input, pixel for pixel
    np.testing.assert_array_equal(x, dog_fx["input_u8"].transpose(1, 2, 0))
    assert ratio == float(dog_fx["ratio"]) and hw == (576, 768)
    det = p([dog_path])[0]
    _assert_official_rows(det, dog_fx["post_c0.3_n0.45_div_ratio"])
    names = [COCO_CLASSES[c] for c in det.classes]
    assert names == ["dog", "bicycle", "car", "truck"]
    np.testing.assert_allclose(det.scores, [0.855, 0.803, 0.798, 0.306], atol=5e-4)
    # the evaluator's thresholds through the same executable: 134 detections, as the official
    low = p([dog_path], conf=0.001, nms=0.65)[0]
    _assert_official_rows(low, dog_fx["post_c0.001_n0.65_div_ratio"], box_atol=2e-3)
    assert p.cache_size() == 1


def test_dog_class_agnostic_matches_official_demo(nano, dog_fx, dog_path):
    model, variables, config = nano
    p = Predictor(model, variables, conf=0.3, nms=0.45, config=config, class_agnostic=True,
                  batch_buckets=(1,))
    det = p([read_image(dog_path)])[0]
    _assert_official_rows(det, dog_fx["post_c0.3_n0.45_agnostic_div_ratio"])
    assert [COCO_CLASSES[c] for c in det.classes] == ["dog", "bicycle", "car"]
    np.testing.assert_allclose(det.scores, [0.855, 0.803, 0.798], atol=5e-4)


def test_bfloat16_runs_close_to_official(nano, dog_fx, dog_path):
    model, variables, config = nano
    p = Predictor(model, variables, conf=0.3, nms=0.45, config=config, class_agnostic=True,
                  dtype="bfloat16", batch_buckets=(1,))
    assert p.model.dtype == np.dtype("bfloat16")
    det = p([dog_path])[0]
    ref = dog_fx["post_c0.3_n0.45_agnostic_div_ratio"]
    assert det.boxes.dtype == np.float32
    assert [COCO_CLASSES[c] for c in det.classes] == ["dog", "bicycle", "car"]
    # bf16 keeps 8 bits of mantissa: a few pixels on 768x576 boxes, ~1e-2 on scores
    np.testing.assert_allclose(det.boxes, ref[:, :4], atol=8.0)
    np.testing.assert_allclose(det.scores, ref[:, 4] * ref[:, 5], atol=3e-2)
