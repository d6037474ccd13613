"""Where results live: the checkpoint store, blob folders or buckets, leases, atomic writes.

Checkpoint records are immutable and content-addressed (:mod:`~searchmerge.storage.store`);
their bytes sit in a folder or an S3-compatible bucket (:mod:`~searchmerge.storage.blobs`).
Leases (:mod:`~searchmerge.storage.lease`) let one worker of many train the originals.
When two tensors are one tensor, or share memory, is defined once in
:mod:`~searchmerge.storage.identity`, for the store and every layer above it.
This layer knows nothing of models or studies: it imports only :mod:`searchmerge.core`.
"""
