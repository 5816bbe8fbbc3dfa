"""SDI Text-to-3D: a Blender add-on that turns a text prompt into a 3D object.

The machine learning (torch, diffusers) runs out of process, in the server
environment that vendor_setup.py makes, and that environment imports this
package too. So nothing here may import bpy or torch at import time: the
Blender side is imported inside register()/unregister() only.
"""

__version__ = "0.1.0"


def register() -> None:
    """Called by Blender when the add-on is enabled."""
    from . import addon

    addon.register()


def unregister() -> None:
    """Called by Blender when the add-on is disabled; stops its server, undoes register()."""
    from . import addon

    addon.unregister()
