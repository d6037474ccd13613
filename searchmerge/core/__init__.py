"""The bottom layer: what every other layer may use, with no torch and no I/O.

Errors (:mod:`~searchmerge.core.errors`), sharing plans and the search space
(:mod:`~searchmerge.core.space`), the one feasibility rule
(:mod:`~searchmerge.core.feasibility`), study-file key checks (:mod:`~searchmerge.core.keys`),
the plug-in registry (:mod:`~searchmerge.core.registry`), importing a user's factory
(:mod:`~searchmerge.core.imports`) and the progress callback (:mod:`~searchmerge.core.progress`).
"""
