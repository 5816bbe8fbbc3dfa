"""The job queue and the TCP server the Blender add-on talks to; the only layer that speaks the wire protocol."""
