"""The 3D side: hash-grid encoding, the radiance field, its background, cameras, shading and the volume renderer."""
