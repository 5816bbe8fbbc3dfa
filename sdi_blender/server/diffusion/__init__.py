"""The 2D side: where models come from, the Stable Diffusion prior, prompts and CFG,
SDS/SDI guidance, the tiny model."""
