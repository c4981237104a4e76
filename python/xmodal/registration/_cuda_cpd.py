"""GPU path of :func:`xmodal.cpd` (not implemented yet).

The CUDA kernels (E-step in two passes, G·v, field evaluation) are not written yet; CUDA arrays
are refused with a clear error instead of being copied to the host silently.
"""

from __future__ import annotations


def cpd_cuda(moving, fixed, **kwargs):
    raise NotImplementedError(
        "xmodal.cpd: the CUDA path is not implemented yet; pass numpy arrays (e.g. cupy.asnumpy(x) "
        "or tensor.cpu().numpy()) and device='cpu'")
