"""Blender-side code of the add-on. Its modules import bpy at the top, so only
``sdi_blender.register()`` / ``unregister()`` import them."""
