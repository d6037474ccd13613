"""Training: the originals, merging a plan, the evaluator, the deployment artifact.

* :mod:`~searchmerge.training.train`: training and scoring loops, shared by all task kinds;
* :mod:`~searchmerge.training.recipe` and :mod:`~searchmerge.training.prepare`: the
  originals, as given or trained by the study's recipe, and their baselines;
* :mod:`~searchmerge.training.merge`: one copy of each shared tensor for a plan;
* :mod:`~searchmerge.training.evaluate`: retraining a plan cheaply and judging it;
* :mod:`~searchmerge.training.deployment`: merged weights and manifest on disk, loaded tied;
* :mod:`~searchmerge.training.labelling`: footage labelled by a study's teacher (``searchmerge label``).
"""
