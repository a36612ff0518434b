"""Third-party assets (official weights, the demo image, datasets), obtained at run time.

Nothing third-party is committed to the repository. `python -m yolox_jax.assets fetch NAME...`
downloads each asset from its canonical public source, or copies it from a local mirror
(`--mirror DIR`, `$YOLOX_JAX_MIRROR`, or a `shared/data` folder beside the checkout), verifies
its sha256 (a folder asset: the sha256 of its sorted "sha256  relative/path" listing), and keeps
it in the cache `$YOLOX_JAX_HOME` (default `$XDG_CACHE_HOME/yolox_jax`, else `~/.cache/yolox_jax`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from yolox_jax.home import cache_root

REPO_ROOT = Path(__file__).resolve().parents[1]


class AssetError(RuntimeError):
    pass


@dataclass(frozen=True)
class Asset:
    name: str
    target: str  # file or folder name in the cache
    sha256: tuple[str, ...]  # accepted digests (file: its sha256; folder: its listing digest)
    mirror_path: str  # relative to the mirror root
    url: str = ""
    kind: str = "file"  # "file", or "voc_zip" (a repository archive rearranged into VOC layout)
    description: str = ""
    extra: dict = field(default_factory=dict)


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="yolox_nano",
            target="yolox_nano.pth",
            sha256=(
                # the official 0.1.1rc0 release file
                "cd28f55fbbc1829f99d9ac9b38a16d259a22889739c8728ea877610201feff7b",
                # the local mirror's recovery of the same weights (../shared/data/README.md)
                "13e01cd946a0781fd8e59bd4979b3d62fecc1728d774f443519a965edc236c88",
            ),
            mirror_path="weights/yolox_nano.pth",
            url="https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/"
            "yolox_nano.pth",
            description="official YOLOX-Nano COCO weights (Apache-2.0)",
        ),
        Asset(
            name="dog",
            target="dog.jpg",
            sha256=("5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866",),
            mirror_path="samples/images/dog.jpg",
            url="https://raw.githubusercontent.com/Megvii-BaseDetection/YOLOX/"
            "6ddff4824372906469a7fae2dc3206c7aa4bbaee/assets/dog.jpg",
            description="the official YOLOX demo image",
        ),
        Asset(
            name="voc_raccoon",
            target="voc_raccoon",
            sha256=("2de968d0316fc3b4828b3b6369b2a45e52223d775794f2885bd1fb84046e814d",),
            mirror_path="voc_raccoon",
            url="https://github.com/datitran/raccoon_dataset/archive/"
            "93938849301895fb73909842ba04af9b602f677a.zip",
            kind="voc_zip",
            description="200 raccoon photos in VOC layout (MIT), train 1-160 / test 161-200",
        ),
    ]
}


def cache_dir() -> Path:
    """Where fetched assets are kept: `home.cache_root()`."""
    return cache_root()


def default_mirror() -> Path | None:
    env = os.environ.get("YOLOX_JAX_MIRROR")
    if env:
        return Path(env)
    for candidate in (REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_listing(root: Path) -> str:
    """'sha256  relpath' lines of every file under `root`, sorted by path (README* excluded)."""
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("README"):
            lines.append(f"{file_sha256(p)}  {p.relative_to(root).as_posix()}")
    return "\n".join(lines) + "\n"


def digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(tree_listing(path).encode()).hexdigest()
    return file_sha256(path)


def _verify(asset: Asset, path: Path, origin: str) -> None:
    got = digest(path)
    if got not in asset.sha256:
        raise AssetError(
            f"asset {asset.name!r} from {origin} has sha256 {got}, expected one of "
            f"{', '.join(asset.sha256)}; refusing to use it"
        )


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read()
    except Exception as e:  # noqa: BLE001 - any network failure gets the same clear message
        raise AssetError(f"could not download {url}: {e}") from e


def _voc_from_zip(data: bytes, out: Path) -> None:
    """datitran/raccoon_dataset archive -> VOC layout with the train (1-160) / test split."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            parts = Path(info.filename).parts
            if len(parts) == 3 and parts[1] in ("images", "annotations") and not info.is_dir():
                sub = "JPEGImages" if parts[1] == "images" else "Annotations"
                (out / sub).mkdir(parents=True, exist_ok=True)
                (out / sub / parts[2]).write_bytes(z.read(info))
            elif len(parts) == 2 and parts[1] == "LICENSE":
                (out / "LICENSE-raccoon_dataset.txt").write_bytes(z.read(info))
    split = out / "ImageSets" / "Main"
    split.mkdir(parents=True, exist_ok=True)
    train = "".join(f"raccoon-{i}\n" for i in range(1, 161))
    (split / "train.txt").write_text(train)
    (split / "trainval.txt").write_text(train)
    (split / "test.txt").write_text("".join(f"raccoon-{i}\n" for i in range(161, 201)))


def fetch(name: str, mirror: Path | str | None = None, offline: bool = False) -> Path:
    """Path of a verified asset in the cache, obtaining it first if needed."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    dest = cache_dir() / asset.target
    if dest.exists():
        _verify(asset, dest, f"the cache ({dest})")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{asset.target}.", dir=dest.parent))
    staged = tmp / asset.target
    tried = []
    try:
        mirror = Path(mirror) if mirror else default_mirror()
        src = mirror / asset.mirror_path if mirror else None
        if src is not None and src.exists():
            origin = f"the mirror {src}"
            if src.is_dir():
                shutil.copytree(src, staged)
            else:
                shutil.copyfile(src, staged)
        else:
            tried.append(f"mirror {src}" if src else "no mirror (set --mirror or YOLOX_JAX_MIRROR)")
            if offline or not asset.url:
                raise AssetError(f"asset {name!r} not found; looked in: {'; '.join(tried)}")
            origin = asset.url
            print(f"downloading {asset.url}", file=sys.stderr)
            data = _download(asset.url)
            if asset.kind == "voc_zip":
                _voc_from_zip(data, staged)
            else:
                staged.write_bytes(data)
        _verify(asset, staged, origin)
        os.replace(staged, dest)  # atomic: a crash never leaves a half-written asset
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None, prog: str = "python -m yolox_jax.assets") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="obtain and verify assets")
    f.add_argument("names", nargs="+", choices=sorted(ASSETS))
    f.add_argument("--mirror", help="local mirror (default: $YOLOX_JAX_MIRROR or shared/data)")
    f.add_argument("--offline", action="store_true", help="never download")
    sub.add_parser("list", help="list known assets")
    args = parser.parse_args(argv)
    if args.command == "list":
        for a in ASSETS.values():
            print(f"{a.name:12s} {a.target:16s} {a.description}")
        return 0
    try:
        for name in args.names:
            print(fetch(name, args.mirror, args.offline))
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
