"""A study file, read and checked: the workload, its settings, each model's data request.

* :mod:`~searchmerge.config.workload`: models (a torchvision name or a factory, weights, input);
* :mod:`~searchmerge.config.settings`: the study's settings (target, evaluator, training, pretraining);
* :mod:`~searchmerge.config.schema`: the one validator of the settings (types, ranges, unknown keys);
* :mod:`~searchmerge.config.deploy`: the ``deploy:`` section (GPU memory, fps, latency target);
* :mod:`~searchmerge.config.drift`: the ``drift:`` section (named drift scenarios);
* :mod:`~searchmerge.config.teacher`: the ``teacher:`` section (the model that labels frames), loaded;
* :mod:`~searchmerge.config.data_request`: each model's data and task, resolved but not read;
* :mod:`~searchmerge.config.study`: the study file as a whole, with its storage
  (:func:`~searchmerge.config.study.open_study_file`).

The YAML document is parsed once, in :func:`~searchmerge.config.study.read_study_file`, into
one frozen :class:`~searchmerge.config.study.StudyFile`; no layer above sees the document.

Imports :mod:`searchmerge.core`, :mod:`searchmerge.storage` and :mod:`searchmerge.data`.
"""
