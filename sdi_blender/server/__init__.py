"""Everything that needs torch: the diffusion prior, score distillation and the jobs built on them.

Modules, in the order data flows: ``model_source`` → ``prior`` (with ``prompts``) →
``guidance`` → ``distill2d``; ``tiny_model`` builds the offline test model and ``images``
writes results. Importing this package itself loads nothing heavy.
"""
