"""Add-on preferences: where the server environment's Python lives."""

import bpy

# Blender looks preferences up by the add-on's module name, which is the parent
# of this subpackage; as an extension it carries a prefix (bl_ext.<repo>.sdi_blender).
ADDON_PACKAGE = __package__.rpartition(".")[0]


class SDIAddonPreferences(bpy.types.AddonPreferences):
    """Settings shown under Edit > Preferences > Add-ons."""

    bl_idname = ADDON_PACKAGE

    server_python: bpy.props.StringProperty(
        name="Server Python",
        description="Python of the server environment made by vendor_setup.py",
        subtype="FILE_PATH",
    )

    def draw(self, context: bpy.types.Context) -> None:
        self.layout.prop(self, "server_python")


CLASSES = (SDIAddonPreferences,)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    # Reverse order, so a class is gone before anything it may depend on.
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
