"""What the Snakefile plans with, as code a unit test reaches.

``plan``: the config and the inputs checked into values plus a list of problems;
``housekeeping``: a lock left by a killed run, the number of GPU jobs at once;
``registries``: what planning needs of the encoder and model registries, read in a subprocess
(``python -m querent.pipeline.registries``) so that planning never imports torch.
"""
