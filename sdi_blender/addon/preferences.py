# mypy: disable-error-code="valid-type"
# (Blender declares properties as calls in class annotations, e.g. ``x: bpy.props.IntProperty()``.)
"""Add-on preferences: which server to use and how (Edit > Preferences > Add-ons > SDI)."""

from __future__ import annotations

import os
from pathlib import Path

import bpy

from .. import catalog
from .controller import ServerSettings

# Blender looks preferences up by the add-on's module name, which is the parent of this
# subpackage; as an extension it carries a prefix (bl_ext.<repo>.sdi_blender).
ADDON_PACKAGE = __package__.rpartition(".")[0]
SERVER_PYTHON_ENV = "SDI_SERVER_PYTHON"
LOCAL = "LOCAL"
"""The Model menu's entry for a model folder on disk (:attr:`SDIAddonPreferences.model_folder`)."""
MODEL_ITEMS = [(mid, label, what) for mid, (label, what) in catalog.MODELS.items()] + [
    (LOCAL, "Local folder", "A diffusers model folder on this machine (or the server's, for a remote one)")
]


class SDIAddonPreferences(bpy.types.AddonPreferences):
    """Settings shown under Edit > Preferences > Add-ons."""

    bl_idname = ADDON_PACKAGE

    server_python: bpy.props.StringProperty(
        name="Server Python",
        description="Python of the server environment made by vendor_setup.py (.venv/bin/python); "
        "$SDI_SERVER_PYTHON overrides it",
        subtype="FILE_PATH",
    )
    model_choice: bpy.props.EnumProperty(
        name="Model", items=MODEL_ITEMS, default=catalog.DEFAULT_MODEL, description="The diffusion model jobs use"
    )
    model_folder: bpy.props.StringProperty(
        name="Model Folder", subtype="DIR_PATH", description="A diffusers model folder (model_index.json inside)"
    )
    model: bpy.props.StringProperty(
        name="Model (old)",
        description="The free-text model of earlier versions; a value here is moved to Model on first use",
    )
    stall_seconds: bpy.props.IntProperty(
        name="Download Stall",
        default=60,
        min=5,
        max=3600,
        subtype="TIME_ABSOLUTE",
        description="A model download with no new data for this many seconds is shown as stalled",
    )
    jobs_dir: bpy.props.StringProperty(
        name="Jobs Folder",
        subtype="DIR_PATH",
        description="Where the server keeps its jobs (empty: the add-on's user folder)",
    )
    device: bpy.props.EnumProperty(
        name="Device",
        default="auto",
        items=[(name, label, what) for name, (label, what) in catalog.DEVICES.items()],
        description="Where the server computes (the command line's --device)",
    )
    use_remote: bpy.props.BoolProperty(
        name="Remote Server",
        description="Connect to a running server instead of starting one; "
        "it must see the same jobs folder path to import its meshes",
    )
    remote_host: bpy.props.StringProperty(name="Host", default="127.0.0.1")
    remote_port: bpy.props.IntProperty(name="Port", default=8765, min=1, max=65535)
    remote_token: bpy.props.StringProperty(
        name="Token", subtype="PASSWORD", description="The server's token file's contents"
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        col = layout.column()
        row = col.row(align=True)
        row.prop(self, "server_python")
        row.operator("sdi.check_python", text="", icon="CHECKMARK")
        if os.environ.get(SERVER_PYTHON_ENV):
            col.label(text=f"${SERVER_PYTHON_ENV} overrides it: {os.environ[SERVER_PYTHON_ENV]}", icon="INFO")
        col.prop(self, "model_choice")
        if self.model_choice == LOCAL:
            col.prop(self, "model_folder")
        if self.model.strip():
            col.label(text=f"From an earlier version: '{self.model.strip()}' (used until Generate moves it)")
        col.prop(self, "stall_seconds")
        col.prop(self, "jobs_dir")
        col.prop(self, "device")
        col.prop(self, "use_remote")
        sub = col.column()
        sub.active = self.use_remote
        for name in ("remote_host", "remote_port", "remote_token"):
            sub.prop(self, name)


def get(context: bpy.types.Context | None = None) -> SDIAddonPreferences:
    return (context or bpy.context).preferences.addons[ADDON_PACKAGE].preferences


def migrate_model(prefs: SDIAddonPreferences) -> None:
    """Move an earlier version's free-text model into the menu: a known id selects it, anything
    else (a folder, another hub id) becomes the local folder. Not in draw(), which may not write."""
    old = prefs.model.strip()
    if not old:
        return
    if old in catalog.MODELS:
        prefs.model_choice = old
    else:
        prefs.model_choice, prefs.model_folder = LOCAL, old
    prefs.model = ""


def model(prefs: SDIAddonPreferences) -> str:
    """The model jobs use: the menu's, or the local folder's path ("" when that is not set)."""
    if prefs.model.strip():  # not migrated yet (e.g. read while drawing)
        return prefs.model.strip()
    if prefs.model_choice == LOCAL:
        return bpy.path.abspath(prefs.model_folder).rstrip("/\\") if prefs.model_folder else ""
    return prefs.model_choice


def server_python(prefs: SDIAddonPreferences) -> str:
    return os.environ.get(SERVER_PYTHON_ENV) or bpy.path.abspath(prefs.server_python)


def jobs_dir(prefs: SDIAddonPreferences) -> Path:
    if prefs.jobs_dir:
        return Path(bpy.path.abspath(prefs.jobs_dir))
    try:
        return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, create=True)) / "jobs"
    except ValueError:  # installed as a legacy add-on, not as an extension
        return Path(bpy.utils.user_resource("DATAFILES", path="sdi_blender", create=True)) / "jobs"


def server_settings(context: bpy.types.Context | None = None) -> ServerSettings:
    """The preferences as the controller takes them."""
    prefs = get(context)
    migrate_model(prefs)
    remote = prefs.use_remote
    return ServerSettings(
        python=server_python(prefs),
        jobs_dir=jobs_dir(prefs),
        model=model(prefs),
        device=prefs.device,
        host=prefs.remote_host.strip() if remote else "",
        port=prefs.remote_port if remote else 0,
        token=prefs.remote_token if remote else "",
    )


CLASSES = (SDIAddonPreferences,)
