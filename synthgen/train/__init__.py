"""Training of the paper's segmentation UNet on synthetic data made on the training device: the library behind
``train/run.py`` (``synthgen-train``): :mod:`.config` (the run's recipe), :mod:`.loop` (the loop), :mod:`.run` (the
command line), :mod:`.checkpoint`, :mod:`.losses`, :mod:`.validate`, :mod:`.plots`.
"""
