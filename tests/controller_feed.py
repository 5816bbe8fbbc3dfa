"""Feeding server messages to the add-on's controller (tests/test_addon_controller*.py,
tests/test_addon_wording.py); the ``c`` fixture, a controller with no server, is in conftest."""

from __future__ import annotations

from sdi_blender.addon.controller import Controller


def feed(c: Controller, *messages: dict):
    """Queue ``messages`` as if the server had sent them, then apply them: the poll's outcome."""
    for message in messages:
        c._outbox.put(message)
    return c.poll()
