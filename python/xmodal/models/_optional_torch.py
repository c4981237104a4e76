"""Import torch lazily with a helpful message."""

from __future__ import annotations


def torch_module():
    from .._optional import optional_import

    return optional_import("torch", purpose="the shipped network models")
