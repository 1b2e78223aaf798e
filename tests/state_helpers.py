"""Optimizer state archives built from parts, for the tests that feed
`from_bytes` crafted or damaged state (test_serialize, test_api_errors)."""

from __future__ import annotations

import io
import json

import numpy as np

from optsvc.optim import serialize


def archive(meta, arrays, *, rehash=False, meta_bytes=None) -> bytes:
    """An .npz like optsvc's, from parts (optionally with a recomputed digest,
    so that only the check under test fails)."""
    arrays = dict(arrays)
    if rehash:
        meta = dict(meta, sha256=serialize._digest(arrays, meta))
    if meta_bytes is None:
        meta_bytes = json.dumps(meta).encode()
    arrays["__meta__"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
