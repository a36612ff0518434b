"""`yolox-jax convert` (= convert_torch_weights.py): official .pth -> our checkpoint -> official
.pth, bit-exact, and one clear message for each kind of bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import REPO
from fixture_weights import fixture_state_dict

from yolox_jax.cli import convert as convert_torch_weights
from yolox_jax.config import variant_config
from yolox_jax.weights.checkpoint import load_checkpoint
from yolox_jax.weights.convert import WeightsError, check_state_dict, from_torch_state_dict
from yolox_jax.weights.torch_io import extract_state_dict, load_torch_file, save_torch_file


@pytest.fixture(scope="module")
def nano_pth(tmp_path_factory):
    """The nano fixture state dict (the fixtures' weight rule) saved in the official layout."""
    sd = fixture_state_dict("yolox_nano")
    path = tmp_path_factory.mktemp("pth") / "yolox_nano.pth"
    save_torch_file({"model": sd, "start_epoch": 300}, path)
    return path, sd


def test_convert_and_reverse_round_trip_is_bit_exact(nano_pth, tmp_path, capsys):
    path, sd = nano_pth
    out = tmp_path / "ours"
    assert convert_torch_weights.main([str(path), "--output", str(out)]) == 0
    assert "yolox_nano, 80 classes" in capsys.readouterr().out
    model, variables, config = load_checkpoint(out)
    assert config.name == "yolox_nano" and model.num_classes == 80
    back_path = tmp_path / "back.pth"
    assert convert_torch_weights.main([str(out), "--output", str(back_path), "--reverse"]) == 0
    back = extract_state_dict(load_torch_file(back_path))
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert back[k].tobytes() == v.tobytes(), k


def test_loaded_checkpoint_equals_direct_conversion(nano_pth):
    path, sd = nano_pth
    _, variables, _ = load_checkpoint(path)
    direct = from_torch_state_dict(sd, "yolox_nano")
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(direct), strict=True):
        np.testing.assert_array_equal(a, b)


def _run_error(argv, capsys) -> str:
    assert convert_torch_weights.main(argv) == 2
    return capsys.readouterr().err


def test_wrong_variant_says_what_it_looks_like(tmp_path, capsys):
    path = tmp_path / "tiny.pth"
    save_torch_file({"model": fixture_state_dict("yolox_tiny")}, path)
    err = _run_error(
        [str(path), "--output", str(tmp_path / "o"), "--config", str(REPO / "configs/yolox_s.py")],
        capsys,
    )
    assert str(path) in err
    assert "This looks like yolox_tiny, not yolox_s" in err
    assert "shape mismatches" in err


def test_missing_and_unexpected_keys_are_listed(nano_pth, tmp_path, capsys):
    _, sd = nano_pth
    broken = dict(sd)
    del broken["head.obj_preds.1.weight"]
    broken["head.extra.weight"] = np.zeros(3, np.float32)
    path = tmp_path / "broken.pth"
    save_torch_file({"model": broken}, path)
    err = _run_error([str(path), "--output", str(tmp_path / "o")], capsys)
    assert "missing keys (1): head.obj_preds.1.weight" in err
    assert "unexpected keys (1): head.extra.weight" in err
    assert not (tmp_path / "o").exists()


def test_shape_mismatch_is_listed():
    sd = fixture_state_dict("yolox_nano")
    sd["head.stems.0.conv.weight"] = np.zeros((32, 64, 1, 1), np.float32)
    with pytest.raises(WeightsError, match=r"head\.stems\.0\.conv\.weight: got \(32, 64, 1, 1\)"):
        check_state_dict(sd, variant_config("yolox_nano"))


def test_not_a_yolox_state_dict(tmp_path, capsys):
    path = tmp_path / "resnet.pth"
    save_torch_file({"fc.weight": np.zeros((10, 4), np.float32)}, path)
    err = _run_error([str(path), "--output", str(tmp_path / "o")], capsys)
    assert "not a YOLOX state dict" in err and str(path) in err


@pytest.mark.parametrize(
    "content, expected",
    [(b"", "empty"), (b"\xff\xd8\xff\xe0" + bytes(32), "JPEG")],
    ids=["empty", "image"],
)
def test_bad_files_exit_with_one_message(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    err = _run_error([str(path), "--output", str(tmp_path / "o")], capsys)
    assert expected in err and str(path) in err
    assert "Traceback" not in err


def test_missing_checkpoint(tmp_path, capsys):
    err = _run_error([str(tmp_path / "nope.pth"), "--output", str(tmp_path / "o")], capsys)
    assert "no such file" in err
    err = _run_error([str(tmp_path / "nodir"), "--output", str(tmp_path / "o.pth"), "--reverse"],
                     capsys)
    assert "does not exist" in err


def test_num_classes_is_inferred(tmp_path):
    sd = fixture_state_dict("yolox_nano")
    rng = np.random.default_rng(0)
    for i in range(3):
        sd[f"head.cls_preds.{i}.weight"] = rng.standard_normal((3, 64, 1, 1)).astype(np.float32)
        sd[f"head.cls_preds.{i}.bias"] = rng.standard_normal(3).astype(np.float32)
    path = tmp_path / "three.pth"
    save_torch_file({"model": sd}, path)
    model, variables, config = load_checkpoint(path)
    assert model.num_classes == 3 and config.model.num_classes == 3
