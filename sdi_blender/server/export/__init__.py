"""From a trained field to a textured mesh: marching cubes, UVs and baking, the pipeline
and its crash-isolating child process."""
