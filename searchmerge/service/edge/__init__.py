"""The edge agent: serving the published version on camera streams, sampling frames for the
service, switching versions between two frames, metrics and health.

Never imports :mod:`searchmerge.service.cloud`: the edge and the cloud share only the
documents of :mod:`searchmerge.service.protocol`.
"""
