"""Everything that needs torch, in subpackages by role that import one way only:

util ← scene, diffusion ← toyworld ← training ← export ← evaluation ← commands, service.

``scene`` renders (encoding → field, background, cameras, shading → renderer); ``diffusion``
scores renders (model source → prior, prompts → guidance); ``training`` joins them into a run;
``export`` turns a run into a textured mesh; ``evaluation`` scores runs; ``commands`` are the
CLI's back-ends and ``service`` the add-on's server. Importing this package loads nothing heavy.
"""
