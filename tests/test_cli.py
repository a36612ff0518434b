"""The `yolox-jax` command: the subcommands are listed, every CLI turns a user's mistake into one
line on stderr naming the key or file (exit 2, no traceback; `--debug` shows it), `eval` scores VOC
and YOLO datasets and writes its plots, `plot` draws a workdir's curves."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO
from test_trainer import write_voc

from yolox_jax.cli import main
from yolox_jax.config import ConfigError, validate_config, variant_config

NANO = str(REPO / "configs" / "yolox_nano.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _err(capsys, argv, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def assert_png(path, min_side=200):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    img = cv2.imread(str(path))
    assert img is not None and min(img.shape[:2]) >= min_side
    assert img.std() > 5, f"{path} is blank"  # something was drawn
    return img


@pytest.fixture(scope="module")
def gen_pth(tmp_path_factory):
    from fixture_weights import fixture_state_dict

    from yolox_jax.weights.torch_io import save_torch_file

    path = tmp_path_factory.mktemp("weights") / "gen_nano.pth"
    save_torch_file({"model": fixture_state_dict("yolox_nano")}, path)
    return path


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "predict", "export", "convert", "convert-dataset", "plot",
                 "preview", "assets", "pack"):
        assert f"\n  {name} " in out
    res = subprocess.run([str(REPO / ".venv" / "bin" / "yolox-jax"), "--help"],
                         capture_output=True, text=True, timeout=60)
    if res.returncode == 127 or not (REPO / ".venv" / "bin" / "yolox-jax").exists():
        pytest.skip("no .venv/bin/yolox-jax (the package is not installed in .venv)")
    assert res.returncode == 0 and "predict" in res.stdout


def test_unknown_and_unavailable_commands(capsys):
    assert "did you mean 'train'" in _err(capsys, ["trian"])
    from yolox_jax import cli

    for name in ("export", "pack"):
        if not cli.available(cli.COMMANDS[name][0]):
            assert "not available in this build" in _err(capsys, [name, "--help"])


@pytest.mark.parametrize("override, expected", [
    ("--config.train.max_epochs=3", "unknown config key 'train.max_epochs'; did you mean "
                                    "'train.max_epoch'?"),
    ("--config.trian.batch_size=8", "did you mean 'train.batch_size'?"),
    ("--config.train.bogus=1", "unknown config key 'train.bogus'; valid keys of 'train': "),
    ("--config.train.batch_size=abc", "--config.train.batch_size=abc: invalid literal"),
    ("--config.train.max_epoch=-1", "train.max_epoch must be a positive number of epochs, got -1"),
    ("--config.data.input_size=(100,100)", "data.input_size must be (height, width), positive "
                                           "multiples of 32, got (100, 100)"),
    ("--config.data.format=kitti", "data.format must be 'coco', 'voc' or 'yolo', got 'kitti'"),
    ("--config.data.mosaic_prob=2.0", "data.mosaic_prob must be a probability in [0, 1]"),
])
def test_train_config_errors_before_any_data(tmp_path, capsys, override, expected):
    err = _err(capsys, ["train", "--config", NANO, "--workdir", str(tmp_path / "w"),
                        "--config.data.data_dir=/nowhere", override])
    assert err.startswith("yolox-jax train: error: ") and expected in err
    assert err.count("\n") == 1
    assert not (tmp_path / "w").exists()  # nothing started


def test_train_missing_things(tmp_path, capsys):
    err = _err(capsys, ["train", "--config", str(tmp_path / "nope.py"), "--workdir", "w"])
    assert "cannot load config file" in err and "nope.py" in err
    err = _err(capsys, ["train", "--config", NANO, "--workdir", str(tmp_path / "w")])
    assert "data.data_dir must be the dataset root" in err
    err = _err(capsys, ["train", "--config", NANO, "--workdir", str(tmp_path / "w"),
                        "--config.data.format=voc", f"--config.data.data_dir={tmp_path}"])
    assert "VOC split file" in err and str(tmp_path) in err
    with pytest.raises(SystemExit) as e:  # argparse: the flag is missing
        main(["train", "--config", NANO])
    assert e.value.code == 2
    assert "--workdir" in capsys.readouterr().err
    with pytest.raises(ConfigError):  # --debug: the exception itself
        main(["train", "--config", NANO, "--workdir", "w", "--config.train.bogus=1", "--debug"])


def test_train_py_shim_keeps_its_flags(tmp_path):
    res = subprocess.run(
        [sys.executable, "train.py", "--config", NANO, "--workdir", str(tmp_path / "w"),
         "--config.train.max_epochs=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == ("train.py: error: unknown config key 'train.max_epochs'; did "
                                  "you mean 'train.max_epoch'?")


def test_validate_config_batch_over_devices():
    c = variant_config("yolox_nano")
    c.data.data_dir = "/data"
    c.train.batch_size = 6
    validate_config(c, num_devices=3)
    with pytest.raises(ConfigError, match="train.batch_size 6 must be divisible by the 4 devices"):
        validate_config(c, num_devices=4)
    c.data.class_names = ("a", "b")
    with pytest.raises(ConfigError, match="data.class_names must be empty or 80 names"):
        validate_config(c)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_voc(tmp_path_factory.mktemp("voc") / "tiny", n=6)


def test_eval_errors(tmp_path, capsys, gen_pth, voc):
    err = _err(capsys, ["eval", "-c", str(tmp_path / "none.pth"), "--data-dir", str(voc)])
    assert "none.pth' does not exist" in err
    err = _err(capsys, ["eval", "-c", str(gen_pth), "--data-dir", str(voc), "--ann", "x.json"])
    assert "COCO annotation file not found" in err and "x.json" in err
    err = _err(capsys, ["eval", "-c", str(gen_pth), "--data-dir", str(voc), "--tsize", "65"])
    assert "--tsize must be positive multiples of 32" in err
    err = _err(capsys, ["eval", "-c", str(gen_pth), "--data-dir", str(voc), "--voc-split", "nope"])
    assert "nope.txt" in err
    err = _err(capsys, ["eval", "-c", str(gen_pth), "--data-dir", str(voc)])  # default VOC names
    assert "img000.xml: object 0 has class 'disc', not among the 20 class names" in err


def test_eval_voc_with_plots(tmp_path, capsys, gen_pth, voc):
    plots = tmp_path / "plots"
    stats = tmp_path / "stats.json"
    assert main(["eval", "-c", str(gen_pth), "--data-dir", str(voc), "--class-names", "box,disc",
                 "--tsize", "64", "--no-progress", "--no-split-timing", "--plots", str(plots),
                 "--plot-conf", "0.3", "--stats-out", str(stats)]) == 0
    out = capsys.readouterr().out
    assert "VOC (voc07_11point): mAP@0.5" in out and "plots written" in out
    assert json.loads(stats.read_text())["num_images"] == 4
    assert_png(plots / "PR_curve.png")
    assert_png(plots / "confusion_matrix.png")


def test_eval_yolo_is_coco_scored(tmp_path, capsys, gen_pth, voc):
    yolo = tmp_path / "yolo"
    assert main(["convert-dataset", "voc", str(voc), "yolo", str(yolo), "--class-names",
                 "box,disc", "--splits", "train,test:val"]) == 0
    assert main(["eval", "-c", str(gen_pth), "--yaml", str(yolo / "data.yaml"), "--tsize", "64",
                 "--no-progress", "--no-split-timing", "--plots", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in out and "on 4 images" in out
    assert_png(tmp_path / "p" / "PR_curve.png")
    # a --data-dir holding a data.yaml is a YOLO dataset too
    assert main(["eval", "-c", str(gen_pth), "--data-dir", str(yolo), "--split", "train",
                 "--tsize", "64", "--no-progress", "--no-split-timing"]) == 0
    assert "on 6 images" in capsys.readouterr().out


def test_confusion_matrix_counts():
    from types import SimpleNamespace as NS

    from yolox_jax.eval.confusion import confusion_matrix

    rec = NS(boxes=np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60.]]),
             classes=np.array([0, 1, 1]), ignore=np.zeros(3, bool), difficult=np.zeros(3, bool))
    det = NS(boxes=np.array([[0, 0, 10, 11], [20, 20, 30, 30], [80, 80, 90, 90.]]),
             scores=np.array([0.9, 0.8, 0.7]), classes=np.array([0, 0, 1]))
    m = confusion_matrix([det], [rec], 2, conf=0.25)
    # [pred, true]: 0->0 right, a class-1 box called 0, a class-1 box missed, a false class 1
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 0, 1], [0, 1, 0]])


def test_plot_results_from_metrics(tmp_path, capsys):
    rows = []
    for epoch in (1, 2, 3):
        for step in range(2):
            rows.append({"step": epoch * 2 + step, "kind": "train", "epoch": epoch,
                         "total": 10 - epoch - step / 2, "iou": 3 - epoch / 2, "obj": 2.0,
                         "cls": 1.0 / epoch, "l1": 0.0 if epoch < 3 else 0.5, "lr": 1e-3 * epoch})
        rows.append({"step": epoch * 2 + 1, "kind": "eval", "epoch": epoch, "mAP50": 0.2 * epoch,
                     "mAP50_95": 0.1 * epoch})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(tmp_path)]) == 0
    assert "results.png" in capsys.readouterr().out
    img = assert_png(tmp_path / "results.png", 500)
    assert img.shape[:2] == (700, 1600)
    from yolox_jax.plots import read_metrics

    train, evals = read_metrics(tmp_path / "metrics.jsonl")
    assert train[1]["total"] == pytest.approx(8.75) and evals[3]["mAP50"] == pytest.approx(0.6)
    err = _err(capsys, ["plot", str(tmp_path / "nowhere")])
    assert "metrics.jsonl' does not exist" in err
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    assert "metrics.jsonl:1: not a json line" in _err(capsys, ["plot", str(tmp_path)])


def test_preview_and_assets_errors(tmp_path, capsys):
    err = _err(capsys, ["preview", "--config", NANO])
    assert "no dataset" in err
    err = _err(capsys, ["preview", "--config", NANO, "--yaml", str(tmp_path / "d.yaml")])
    assert "d.yaml' not found" in err
    assert main(["assets", "list"]) == 0
    assert "yolox_nano" in capsys.readouterr().out
