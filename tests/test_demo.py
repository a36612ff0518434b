"""demo.py end to end, in-process: a video keeps its frame count, size and fps; a folder of images
gives the official demo's detections (class-agnostic NMS); bad input fails with a clear message."""

from __future__ import annotations

import importlib.util
import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import REPO, need_shared


def _load_demo():
    spec = importlib.util.spec_from_file_location("yolox_demo", REPO / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


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
    result = demo.main(["video", str(src), "-c", str(gen_pth), "--config", str(cfg),
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
    result = demo.main([str(folder), "-n", "yolox-nano", "-c", str(pth), "--save-result",
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
    with pytest.raises(SystemExit, match="'nowhere.jpg' does not exist"):
        demo.main(["image", "nowhere.jpg", *ck])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit, match="bad.jpg.*cannot be decoded"):
        demo.main(["image", str(bad), *ck])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images"):
        demo.main(["folder", str(tmp_path / "empty"), *ck])
    with pytest.raises(SystemExit, match="unknown demo kind 'picture'"):
        demo.main(["picture", str(bad), *ck])
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(SystemExit, match="cannot tell whether"):
        demo.main([str(notes), *ck])
    fake = tmp_path / "fake.avi"
    fake.write_text("not a video")
    with pytest.raises(SystemExit, match="could not open video .*fake.avi"):
        demo.main(["video", str(fake), *ck])
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SystemExit, match="checkpoint .*missing.pth' does not exist"):
        demo.main(["image", str(good), "-c", str(tmp_path / "missing.pth")])
