"""The merging service (cloud side): versions, samples, drift monitor, re-search jobs, HTTP API.

Never imported by :mod:`searchmerge.service.edge`.
"""
