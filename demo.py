"""Detect objects in an image, a folder, a video or a camera (the same command as
`yolox-jax predict`), as the official `tools/demo.py`.

    python demo.py image samples/dog.jpg --name yolox_nano --checkpoint yolox_nano.pth --save-result
    python demo.py clip.avi --checkpoint yolox_nano.pth     # kind guessed from the path

The code and the full description are in `yolox_jax/cli/predict.py` (`--help`).
"""

import sys

from yolox_jax.cli.predict import main

if __name__ == "__main__":
    sys.exit(main(prog="demo.py"))
