"""Plumbing every layer may use: devices, cache folders, atomic file writes, images, console output, step timing."""
