"""Everything that needs torch: the diffusion prior, score distillation and the jobs built on them.

Data flows one way: ``model_source`` → ``prior`` (with ``prompts``) → ``guidance`` ←
renders (``cameras`` → ``renderer`` over ``field``/``background`` with ``shading``) →
``trainer`` (``train_config``, ``regularizers``, ``run_dir``, ``reports``) → ``mesh`` →
``texture`` → ``export``. ``distill2d`` is the paper's 2D experiment; ``generate`` and
``export`` back the commands; ``tiny_model`` builds the offline test model and ``images``
writes pictures. Importing this package itself loads nothing heavy.
"""
