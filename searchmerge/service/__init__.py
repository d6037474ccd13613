"""Edge and cloud together: a merging service that keeps deployments accurate, and the edge agent.

* the **merging service** (:mod:`~searchmerge.service.cloud.service`, HTTP API in
  :mod:`~searchmerge.service.cloud.app`, started by :func:`~searchmerge.service.cloud.server.serve`)
  publishes versions of a study's deployment, takes the edges' samples and statistics,
  checks the samples for drift (:mod:`~searchmerge.service.cloud.monitor`) and re-searches
  when a model misses its target (:mod:`~searchmerge.service.cloud.jobs`); its state lives in
  the study's database (:mod:`~searchmerge.service.cloud.db`);
* the **edge agent** (:mod:`~searchmerge.service.edge.agent`) serves the current version on
  its camera streams (:mod:`~searchmerge.service.edge.streams`) through the swap-aware
  runtime, samples frames for the service, and switches to new versions between two
  frames, copying only the tensors that changed (:mod:`~searchmerge.service.edge.serving`);
* both speak the documents of :mod:`~searchmerge.service.protocol`.

See ``docs/edge-cloud.md``.
"""
