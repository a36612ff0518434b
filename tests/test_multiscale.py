"""Multi-scale training: the official `Exp.random_resize` sizes and `Exp.preprocess` resize.

The resize is checked against the official fixture (`F.interpolate(bilinear, align_corners=False)`
of 160x224 -> 192x256, numeric copy in tests/fixtures/augment.npz, full array in ../shared) and,
for downscales, against OpenCV's float32 INTER_LINEAR: both use src = (dst + 0.5) * in / out - 0.5
clamped at 0 with two taps and no antialias, so on float input they agree up to rounding, for up-
and downscaling alike (cv2's uint8 path uses 11-bit fixed-point weights and would differ by up to
one grey level; `jax.image.resize` antialiases downscales and differs everywhere).
"""

from __future__ import annotations

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES, need_shared

from yolox_jax.data.multiscale import multiscale_size, resize_batch, size_range


@pytest.fixture(scope="module")
def fx() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "augment.npz") as f:
        return {k: f[k] for k in f.files}


def _fixture_inputs() -> np.ndarray:
    """[2, 160, 224, 3] float32: the fixture's rng(3) images (NCHW there), as NHWC."""
    x = np.random.default_rng(3).integers(0, 256, size=(2, 3, 160, 224)).astype(np.uint8)
    return x.transpose(0, 2, 3, 1).astype(np.float32)


def test_resize_matches_official_preprocess_fixture(fx):
    images = _fixture_inputs()
    tsize = tuple(int(v) for v in fx["multiscale_tsize"])
    assert tuple(fx["multiscale_exp_input_size"]) == images.shape[1:3]
    out, labels = resize_batch(jnp.asarray(images), jnp.asarray(fx["multiscale_labels_in"]), tsize)
    out = np.asarray(out).transpose(0, 3, 1, 2)  # NCHW as the fixture
    assert out.shape == (2, 3, *tsize)
    rows, cols = fx["multiscale_output_rows"], fx["multiscale_output_cols"]
    np.testing.assert_allclose(out[:, :, rows, :], fx["multiscale_outputs_at_rows"], atol=1e-4)
    np.testing.assert_allclose(out[:, :, :, cols], fx["multiscale_outputs_at_cols"], atol=1e-4)
    # cx, w scaled by 256/224 and cy, h by 192/160; class and the zero padding rows unchanged.
    np.testing.assert_allclose(np.asarray(labels), fx["multiscale_labels_out"], rtol=1e-6)


def test_resize_matches_full_shared_fixture():
    with np.load(need_shared("fixtures/augment/augment.npz")) as f:
        images = f["multiscale_inputs_u8"].transpose(0, 2, 3, 1).astype(np.float32)
        ref = f["multiscale_outputs"]
        labels_in = f["multiscale_labels_in"]
    out, _ = resize_batch(jnp.asarray(images), jnp.asarray(labels_in), tuple(ref.shape[2:]))
    np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), ref, atol=1e-4)


@pytest.mark.parametrize("size", [(96, 128), (80, 112), (128, 160), (224, 288)])
def test_resize_equals_cv2_float_bilinear_up_and_down(size):
    images = _fixture_inputs()
    labels = np.zeros((2, 4, 5), np.float32)
    labels[:, 0] = (3, 100, 80, 40, 20)
    out, lab = resize_batch(jnp.asarray(images), jnp.asarray(labels), size)
    ref = np.stack(
        [cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for im in images]
    )
    np.testing.assert_allclose(np.asarray(out), ref, atol=5e-3)
    sx, sy = size[1] / 224, size[0] / 160
    expected = [[3, 100 * sx, 80 * sy, 40 * sx, 20 * sy]] * 2
    np.testing.assert_allclose(np.asarray(lab)[:, 0], expected, rtol=1e-6)
    assert not np.asarray(lab)[:, 1:].any()


def test_same_size_is_identity():
    images = jnp.asarray(_fixture_inputs())
    labels = jnp.ones((2, 3, 5))
    out, lab = resize_batch(images, labels, (160, 224))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(images))
    np.testing.assert_array_equal(np.asarray(lab), np.asarray(labels))


def test_size_range_official():
    # yolox_base: int(640 / 32) -+ multiscale_range 5; nano/tiny set random_size = (10, 20).
    assert size_range((640, 640), 5) == (15, 25)
    assert size_range((416, 416), 5, (10, 20)) == (10, 20)
    assert size_range((640, 640), 0) == (20, 20)  # multiscale_range 0 disables it
    with pytest.raises(ValueError, match="multi-scale range"):
        size_range((64, 64), 5)


def test_multiscale_sizes_follow_random_resize():
    base = (640, 640)
    # The official trainer changes the size after iterations 9, 19, ...: steps 0..9 use the base.
    assert {multiscale_size(s, 0, base) for s in range(10)} == {base}
    sizes = [multiscale_size(s, 7, base) for s in range(10, 8000)]
    # Constant within each block of 10 steps.
    for block in range(0, len(sizes), 10):
        assert len(set(sizes[block : block + 10])) == 1
    # randint(15, 25) inclusive, times 32, square base: every value, nothing else.
    assert {h for h, _ in sizes} == {32 * k for k in range(15, 26)}
    assert all(h == w for h, w in sizes)
    # Same on every host (a function of step and seed only), different for another seed.
    assert sizes == [multiscale_size(s, 7, base) for s in range(10, 8000)]
    assert sizes != [multiscale_size(s, 8, base) for s in range(10, 8000)]


def test_multiscale_sizes_nano_and_non_square():
    nano = {multiscale_size(s, 0, (416, 416), 5, (10, 20)) for s in range(10, 5000, 10)}
    assert {h for h, _ in nano} == {32 * k for k in range(10, 21)}
    # Non-square: (32 * size, 32 * int(size * W / H)).
    for s in range(10, 2000, 10):
        h, w = multiscale_size(s, 3, (480, 640))
        k = h // 32
        assert 10 <= k <= 20 and w == 32 * int(k * 640 / 480)
