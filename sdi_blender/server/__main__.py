"""``python -m sdi_blender.server [options]``: the same as ``sdi-blender serve [options]``."""

from __future__ import annotations

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
