"""Helpers for add-on tests that run inside a bpy subprocess (imported there, not by pytest).

Headless bpy has no windows, so panels cannot draw into a real ``UILayout``.
:class:`CheckingLayout` stands in for one and checks every call against Blender's RNA:
the method must be a ``UILayout`` function, its keywords among that function's
parameters, ``prop()`` must name a property of the data, and ``operator()`` an existing
operator whose attributes set afterwards are its properties. So a panel that would fail
to draw in Blender fails here too.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import bpy

_FUNCTIONS = bpy.types.UILayout.bl_rna.functions
_PROPERTIES = bpy.types.UILayout.bl_rna.properties


class DrawError(AssertionError):
    pass


class _OperatorProps:
    def __init__(self, idname: str) -> None:
        module, name = idname.split(".")
        try:
            rna = getattr(getattr(bpy.ops, module), name).get_rna_type()
        except (AttributeError, KeyError):
            raise DrawError(f"no operator '{idname}'") from None
        object.__setattr__(self, "_props", rna.properties)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._props:
            raise DrawError(f"operator has no property '{name}'")


class CheckingLayout:
    """A UILayout stand-in that records and checks every call (see the module doc)."""

    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        object.__setattr__(self, "calls", calls)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _PROPERTIES:
            raise DrawError(f"UILayout has no property '{name}'")

    def __getattr__(self, name: str) -> Any:
        if name not in _FUNCTIONS:
            raise DrawError(f"UILayout has no function '{name}'")
        params = {p.identifier for p in _FUNCTIONS[name].parameters}

        def call(*args: Any, **kwargs: Any) -> Any:
            unknown = set(kwargs) - params
            if unknown:
                raise DrawError(f"UILayout.{name}() has no parameter(s) {sorted(unknown)}")
            return self._record(name, args, kwargs)

        return call

    def _record(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name == "prop":
            data, prop = args[:2]
            if prop not in data.bl_rna.properties:
                raise DrawError(f"{type(data).__name__} has no property '{prop}'")
            self.calls.append(("prop", prop))
        elif name == "operator":
            self.calls.append(("operator", args[0]))
            return _OperatorProps(args[0])
        elif name == "template_list":
            self.calls.append(("template_list", args[0]))
        elif name in ("label", "progress"):
            self.calls.append((name, kwargs.get("text", "")))
        elif name in ("row", "column", "box", "split", "column_flow", "grid_flow"):
            return CheckingLayout(self.calls)
        else:
            self.calls.append((name, None))
        return None


def draw_panels(context: Any = None) -> dict[str, list]:
    """Draw every registered SDI panel (whose poll passes); returns the calls per panel."""
    context = context or bpy.context
    drawn = {}
    for cls in bpy.types.Panel.__subclasses__():
        if getattr(cls, "bl_category", "") != "SDI" or not cls.is_registered:
            continue
        if hasattr(cls, "poll") and not cls.poll(context):
            continue
        calls: list = []
        panel = type("FakePanel", (), {"layout": CheckingLayout(calls)})()
        cls.draw(panel, context)
        drawn[cls.__name__] = calls
    return drawn


class _WithLayout:
    """``target`` as a draw() method sees it, with a checking ``layout``."""

    def __init__(self, target: Any, layout: CheckingLayout) -> None:
        self.__dict__.update(_target=target, layout=layout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def draw_list_items(data: Any, collection: str) -> list:
    """Draw each row of the SDI UIList showing ``data.<collection>``."""
    cls = next(c for c in bpy.types.UIList.__subclasses__() if c.__name__.startswith("SDI_") and c.is_registered)
    calls: list = []
    for index, item in enumerate(getattr(data, collection)):
        cls.draw_item(None, bpy.context, CheckingLayout(calls), data, item, 0, data, collection + "_index", index)
    return calls


def draw_preferences(prefs: Any) -> list:
    calls: list = []
    type(prefs).draw(_WithLayout(prefs, CheckingLayout(calls)), bpy.context)
    return calls


def emit(result: dict) -> None:
    """The subprocess's answer to the test: one JSON line on stdout."""
    sys.stdout.write("RESULT " + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
