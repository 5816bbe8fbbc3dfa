"""``python -m sdi_blender.server [options]``: the generation server, as ``sdi-blender serve``."""

from __future__ import annotations

import sys

from .service.launch import main

if __name__ == "__main__":
    sys.exit(main())
