"""Assets come from a mirror or their public source, are verified by sha256, and fail clearly."""

from __future__ import annotations

import io
import zipfile

import pytest
from conftest import need_shared

from yolox_jax import assets


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOX_JAX_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fetch_from_mirror_verifies_and_caches(home):
    mirror = need_shared("data")
    path = assets.fetch("dog", mirror=mirror, offline=True)
    assert path == home / "dog.jpg"
    assert assets.file_sha256(path) == assets.ASSETS["dog"].sha256[0]
    assert assets.fetch("dog", offline=True) == path  # served from the cache now


def test_folder_asset_digest_matches_the_mirror(home):
    mirror = need_shared("data")
    path = assets.fetch("voc_raccoon", mirror=mirror, offline=True)
    assert len(list((path / "JPEGImages").glob("*.jpg"))) == 200
    assert assets.digest(path) in assets.ASSETS["voc_raccoon"].sha256


def test_hash_mismatch_is_refused(home, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "samples" / "images").mkdir(parents=True)
    (mirror / "samples" / "images" / "dog.jpg").write_bytes(b"not the dog")
    with pytest.raises(assets.AssetError, match="expected one of") as e:
        assets.fetch("dog", mirror=mirror, offline=True)
    assert "mirror" in str(e.value)
    assert not (home / "dog.jpg").exists()  # nothing half-verified is kept


def test_corrupted_cache_is_reported(home):
    home.mkdir(parents=True)
    (home / "dog.jpg").write_bytes(b"tampered")
    with pytest.raises(assets.AssetError, match="the cache"):
        assets.fetch("dog", offline=True)


def test_missing_asset_says_where_it_looked(home, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOX_JAX_MIRROR", str(tmp_path / "empty_mirror"))
    with pytest.raises(assets.AssetError, match="looked in") as e:
        assets.fetch("yolox_nano", offline=True)
    assert str(tmp_path / "empty_mirror" / "weights" / "yolox_nano.pth") in str(e.value)
    with pytest.raises(assets.AssetError, match="unknown asset"):
        assets.fetch("yolox_huge")


def test_cli_error_exit_code(home, tmp_path, capsys):
    code = assets.main(["fetch", "dog", "--mirror", str(tmp_path / "none"), "--offline"])
    assert code == 2 and "error:" in capsys.readouterr().err


def test_voc_zip_rearrangement(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("raccoon_dataset-abc/images/raccoon-1.jpg", b"jpg1")
        z.writestr("raccoon_dataset-abc/annotations/raccoon-1.xml", b"<annotation/>")
        z.writestr("raccoon_dataset-abc/LICENSE", b"MIT")
        z.writestr("raccoon_dataset-abc/other/file.csv", b"x")
    out = tmp_path / "voc"
    assets._voc_from_zip(buf.getvalue(), out)
    assert (out / "JPEGImages" / "raccoon-1.jpg").read_bytes() == b"jpg1"
    assert (out / "Annotations" / "raccoon-1.xml").exists()
    train = (out / "ImageSets" / "Main" / "train.txt").read_text().split()
    test = (out / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert train[0] == "raccoon-1" and len(train) == 160 and len(test) == 40
    assert test[0] == "raccoon-161" and not (out / "other").exists()


def test_one_cache_root_for_assets_compilation_images_and_shards(tmp_path, monkeypatch):
    """$YOLOX_JAX_HOME, else $XDG_CACHE_HOME/yolox_jax, else ~/.cache/yolox_jax: the same root
    for every cache of the project."""
    from yolox_jax.data.cache import default_cache_dir
    from yolox_jax.data.shards import default_local_dir
    from yolox_jax.train.compile import default_cache_dir as compilation_cache_dir

    monkeypatch.delenv("YOLOX_JAX_COMPILATION_CACHE", raising=False)
    for env, root in (({"YOLOX_JAX_HOME": "h", "XDG_CACHE_HOME": "x"}, "h"),
                      ({"XDG_CACHE_HOME": "x"}, "x/yolox_jax"),
                      ({"HOME": "u"}, "u/.cache/yolox_jax")):
        for k in ("YOLOX_JAX_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, str(tmp_path / v))
        root = tmp_path / root
        assert assets.cache_dir() == root
        assert compilation_cache_dir() == root / "jax_cache"
        assert default_cache_dir() == root / "images"
        assert default_local_dir() == str(root / "shards")
