"""Optimizer state archives built from parts, for the tests that feed
`from_bytes` crafted or damaged state (test_serialize, test_api_errors)."""

from __future__ import annotations

import json

from pydantic import ValidationError

from optsvc.fileio import encode_arrays
from optsvc.optim import serialize


def contents(data: bytes) -> tuple[dict, dict]:
    """The record (as JSON data) and the arrays of saved state."""
    meta, arrays = serialize.read_archive(data)
    return meta.model_dump(mode="json"), arrays


def archive(meta, arrays, *, rehash=False, meta_bytes=None) -> bytes:
    """Saved state like optsvc's, from parts (optionally with a recomputed
    digest, so that only the check under test fails; a record that does not
    parse fails before its digest is read)."""
    arrays = dict(arrays)
    if rehash:
        try:
            record = serialize.SavedState.model_validate_json(json.dumps(meta))
            meta = dict(meta, sha256=serialize._digest(arrays, record))
        except ValidationError:
            pass
    text = json.dumps(meta) if meta_bytes is None else meta_bytes.decode("latin-1")
    return encode_arrays(arrays, text)
