"""`yolox-jax predict` (= demo.py) end to end, in-process: a video keeps its frame count, size and
fps; a folder of images gives the official demo's detections (class-agnostic NMS); bad input fails
with a clear message (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import need_shared

from yolox_jax.cli import predict
from yolox_jax.cli.predict import DemoError


@pytest.fixture(scope="module")
def gen_pth(tmp_path_factory):
    """The fixtures' generated yolox_nano weights as an official-layout .pth (no torch needed)."""
    from fixture_weights import fixture_state_dict

    from yolox_jax.weights.torch_io import save_torch_file

    path = tmp_path_factory.mktemp("weights") / "gen_nano.pth"
    save_torch_file({"model": fixture_state_dict("yolox_nano")}, path)
    return path


def _write_video(path, frames, fps):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()


def test_video_frame_for_frame_with_custom_class_names(tmp_path, gen_pth):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (72, 112, 3), dtype=np.uint8) for _ in range(5)]
    src = tmp_path / "clip.avi"
    _write_video(src, frames, fps=7.0)
    cfg = tmp_path / "custom.py"
    names = [f"thing{i}" for i in range(80)]
    cfg.write_text(
        "from yolox_jax.config import variant_config\n\n\n"
        "def get_config():\n"
        "    c = variant_config('yolox_nano')\n"
        f"    c.data.class_names = {tuple(names)!r}\n"
        "    return c\n"
    )
    out = tmp_path / "out"
    result = predict.run(["video", str(src), "-c", str(gen_pth), "--config", str(cfg),
                        "--tsize", "64", "--save-result", "--output-dir", str(out),
                        "--batch-size", "5", "--no-progress"])
    cap = cv2.VideoCapture(str(out / "clip.avi"))  # same name and container as the input
    assert cap.isOpened()
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(7.0)
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (112, 72)
    decoded = 0
    while cap.read()[0]:
        decoded += 1
    cap.release()
    assert decoded == 5
    saved = json.loads((out / "clip.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["num_frames"] == 5 and saved["fps"] == pytest.approx(7.0)
    assert [f["frame"] for f in saved["frames"]] == list(range(5))
    dets = [d for f in saved["frames"] for d in f["detections"]]
    assert dets, "the generated weights score ~0.31 everywhere: some boxes pass conf 0.3"
    for d in dets:
        assert d["class"] == names[d["class_id"]] and d["score"] >= 0.3
        assert len(d["bbox"]) == 4


def test_image_folder_matches_official_demo(tmp_path):
    """The official demo on dog.jpg at 416, conf 0.3, nms 0.45: dog, bicycle, car (no truck:
    class-agnostic NMS, as `tools/demo.py`). Nested names are kept; an unreadable file is skipped
    and listed."""
    pth = need_shared("data/weights/yolox_nano.pth")
    dog_path = need_shared("data/samples/images/dog.jpg")
    with np.load(need_shared("fixtures/real/dog.npz")) as f:
        ref = f["post_c0.3_n0.45_agnostic_div_ratio"]
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(dog_path, folder / "dog.jpg")
    dog = cv2.imread(str(dog_path))
    cv2.imwrite(str(folder / "sub" / "crop.png"), dog[100:400, 300:700])
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    result = predict.run([str(folder), "-n", "yolox-nano", "-c", str(pth), "--save-result",
                        "--output-dir", str(out), "--batch-size", "2", "--no-progress"])
    assert sorted(result["images"]) == ["dog.jpg", "sub/crop.png"]
    assert result["unreadable"] == ["broken.jpg"]
    assert json.loads((out / "detections.json").read_text()) == json.loads(json.dumps(result))
    dets = result["images"]["dog.jpg"]["detections"]
    assert [d["class"] for d in dets] == ["dog", "bicycle", "car"]
    np.testing.assert_allclose([d["bbox"] for d in dets], ref[:, :4], atol=1e-3, rtol=0)
    np.testing.assert_allclose([d["score"] for d in dets], ref[:, 4] * ref[:, 5], atol=2e-5)
    assert cv2.imread(str(out / "dog.jpg")).shape == dog.shape
    assert cv2.imread(str(out / "sub" / "crop.png")).shape == (300, 400, 3)


def test_bad_input_fails_clearly(tmp_path, gen_pth):
    ck = ["-c", str(gen_pth)]
    with pytest.raises(DemoError, match="'nowhere.jpg' does not exist"):
        predict.run(["image", "nowhere.jpg", *ck])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DemoError, match="bad.jpg.*cannot be decoded"):
        predict.run(["image", str(bad), *ck])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DemoError, match="no images"):
        predict.run(["folder", str(tmp_path / "empty"), *ck])
    with pytest.raises(DemoError, match="unknown demo kind 'picture'"):
        predict.run(["picture", str(bad), *ck])
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(DemoError, match="cannot tell whether"):
        predict.run([str(notes), *ck])
    fake = tmp_path / "fake.avi"
    fake.write_text("not a video")
    with pytest.raises(DemoError, match="could not open video .*fake.avi"):
        predict.run(["video", str(fake), *ck])
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DemoError, match="checkpoint .*missing.pth' does not exist"):
        predict.run(["image", str(good), "-c", str(tmp_path / "missing.pth")])


def test_cli_exit_code_and_one_line(tmp_path, gen_pth, capsys):
    """`yolox-jax predict` on bad input: exit 2, `yolox-jax predict: error: ...` naming the
    path, no traceback; --debug raises instead."""
    assert predict.main([str(tmp_path / "nowhere.jpg"), "-c", str(gen_pth)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("yolox-jax predict: error: ") and "nowhere.jpg" in err
    assert "Traceback" not in err and err.count("\n") == 1
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((8, 8, 3), np.uint8))
    assert predict.main([str(good), "-c", str(gen_pth), "--tsize", "100"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert predict.main([str(good), "-c", str(gen_pth), "--name", "yolox_q"]) == 2
    assert "unknown YOLOX variant 'yolox_q'" in capsys.readouterr().err
    with pytest.raises(DemoError):
        predict.main([str(tmp_path / "nowhere.jpg"), "-c", str(gen_pth), "--debug"])


def test_camera_kind_is_inferred_from_a_number(tmp_path):
    args = predict.make_parser().parse_args(["3", "-c", "x"])
    assert predict.resolve_args(args) == ("webcam", None) and args.camid == 3
    args = predict.make_parser().parse_args(["camera", "-c", "x", "--camid", "1"])
    assert predict.resolve_args(args) == ("webcam", None) and args.camid == 1
