"""The toy world: known objects, their independent ground-truth renderer and the exact-denoiser prior built from it."""
