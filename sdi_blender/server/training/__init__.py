"""A text-to-3D run: its config, regularisers, the trainer, the run folder, checkpoints and reports."""
