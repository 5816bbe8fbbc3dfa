"""Blender-side code of the add-on. Its modules import bpy at the top (all but
``controller``, which is bpy-free), so only ``sdi_blender.register()`` /
``unregister()`` import them.

Data flows one way: panel → operators → controller (background thread) → server;
server events → controller → runtime's main-thread timer → importer → scene.
"""

from __future__ import annotations


def _classes() -> tuple:
    from . import operators, panel, preferences, properties, workflow_ops, workflow_panel

    return (
        preferences.CLASSES
        + properties.CLASSES
        + operators.CLASSES
        + workflow_ops.CLASSES
        + panel.CLASSES
        + workflow_panel.CLASSES
    )


def register() -> None:
    import bpy

    from . import properties

    for cls in _classes():
        bpy.utils.register_class(cls)
    properties.register()


def unregister() -> None:
    import bpy

    from . import properties, runtime

    runtime.shutdown()  # a server this add-on started must not outlive it
    properties.unregister()
    # Reverse order, so a class is gone before anything it depends on.
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
