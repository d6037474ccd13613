"""A version ready to serve on the edge's device, and the switch that copies only what changed.

A :class:`ServingVersion` is a verified deployment held by the swap-aware runtime
(:class:`~searchmerge.runtime.runtime.SwapRuntime`: CUDA, or the simulated device on a
CPU). Preparing the next version happens beside the one serving: its tensors are
compared by content (SHA-256 of their bytes) with the resident tensors of the old
version, equal ones are adopted (the same device memory, nothing copied), and only the
changed ones are copied. The old version stays loaded and serving until the new one
is ready; the switch itself is the replacement of one reference between two frames.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from searchmerge.runtime.runtime import SwapRuntime
from searchmerge.service.protocol import VersionInfo
from searchmerge.training.deployment import Deployment, load_deployment

__all__ = ["DETECTION_SCORE", "ServingVersion", "tensor_digest"]

#: A detector's box counts as found on the edge from this score on (its prediction is the count).
DETECTION_SCORE = 0.5


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes: equal digests, equal tensors."""
    digest = hashlib.sha256(f"{tensor.dtype}:{tuple(tensor.shape)}:".encode())
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


@dataclass
class ServingVersion:
    """One loaded version: its models in a runtime, and what loading it cost.

    Attributes:
        info: The version, as the service published it.
        deployment: Its workload, plan and metadata (the models live in ``runtime``).
        runtime: The swap-aware runtime that runs its models.
        digests: Content digest of every tensor, by the runtime's tensor index.
        bytes_copied: Bytes copied to the device to make it ready (changed tensors only).
        bytes_total: Bytes of the whole deployment (every distinct tensor once).
    """

    info: VersionInfo
    deployment: Deployment
    runtime: SwapRuntime
    digests: list[str]
    bytes_copied: int
    bytes_total: int

    @classmethod
    def prepare(cls, info: VersionInfo, directory: Path, *, gpu_memory: int | str, device: str,
                previous: ServingVersion | None = None) -> ServingVersion:
        """Load a verified version folder and make it resident, adopting ``previous``'s unchanged tensors.

        Raises:
            SearchmergeError: If the folder's weights do not match its manifest.
        """
        deployment = load_deployment(directory, device="cpu")  # checks size and SHA-256 first
        runtime = SwapRuntime(deployment.models, gpu_memory=gpu_memory, device=device)
        digests = [tensor_digest(runtime.host_tensor(t)) for t in range(len(runtime.layout.keys))]
        reuse = {}
        if previous is not None:
            resident = {}
            for index, digest in enumerate(previous.digests):
                copy = previous.runtime.resident_tensor(index)
                if copy is not None:
                    resident[digest] = copy
            reuse = {index: resident[digest] for index, digest in enumerate(digests) if digest in resident}
        copied = runtime.preload(reuse)
        return cls(info, deployment, runtime, digests, copied, runtime.layout.resident_bytes)

    def predict(self, model: str, frame: torch.Tensor) -> int:
        """What ``model`` says of one frame (channels x height x width): a classifier's class, or the
        number of objects a detector finds at a score of at least :data:`DETECTION_SCORE`."""
        if self.deployment.workload.spec(model).options.get("task") == "detection":
            found = self.runtime.run(model, [frame])[0]
            return int((found["scores"] >= DETECTION_SCORE).sum())
        outputs = self.runtime.run(model, frame.unsqueeze(0))
        return int(outputs.argmax(dim=1)[0])
