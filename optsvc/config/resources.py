"""The memory a training job will need, estimated from its config before
anything is allocated, so that a size no machine can hold
(`--model.hidden_width 9223372036854775807`) is a clear error naming the
path, not a failed allocation halfway through building."""

from __future__ import annotations

import os
from typing import Any

from optsvc.config.blocks import with_defaults
from optsvc.config.parse import ConfigIssue

# float32 arrays per parameter: weights, gradient, two Adam moments,
# averages, the best weights kept.
ARRAYS_PER_PARAM = 6
# float32 arrays per activation: forward value, its gradient, a spare.
ARRAYS_PER_ACTIVATION = 3
BYTES = 4


def memory_limit() -> int:
    """This machine's physical memory in bytes (1 TiB when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40


def _widths(model: dict[str, Any]) -> list[int]:
    width, depth = model.get("hidden_width"), model.get("depth")
    if isinstance(width, int) and isinstance(depth, int):
        return [width] * depth
    return []


def needs(blocks: dict, functions: dict, batch_size: int) -> dict[str, int]:
    """Bytes the data, the model and one batch's activations need, by the
    config path that sets their size."""
    data = with_defaults(functions["data"], blocks.get("data", ("", {}))[1])
    model = with_defaults(functions["model"], blocks.get("model", ("", {}))[1])
    n_in = data.get("n_features", 2)
    n_out = data.get("n_classes", data.get("n_outputs", 1))
    n_samples = data.get("n_samples", 0)
    widths = _widths(model)
    sizes = [n_in, *widths, n_out]
    n_params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    data_bytes = n_samples * (n_in + n_out) * BYTES
    model_bytes = n_params * ARRAYS_PER_PARAM * BYTES
    batch_bytes = batch_size * sum(sizes) * ARRAYS_PER_ACTIVATION * BYTES
    model_path = "model.hidden_width" if widths else "data.n_features"
    return {
        "data.n_samples": data_bytes,
        model_path: model_bytes,
        "training.batch_size": batch_bytes,
    }


def size_errors(
    blocks: dict, functions: dict, batch_size: int, limit: int | None = None
) -> list[ConfigIssue]:
    """An issue when the job's arrays would not fit in this machine's memory,
    at the path whose size weighs most."""
    limit = memory_limit() if limit is None else limit
    sizes = needs(blocks, functions, batch_size)
    total = sum(sizes.values())
    if total <= limit:
        return []
    path = max(sizes, key=lambda p: sizes[p])
    return [
        ConfigIssue(
            path,
            f"the job would need about {_gib(total)} of memory (model "
            f"parameters, one batch, the data set), more than this machine's "
            f"{_gib(limit)}",
            hint=f"make {path} smaller",
        )
    ]


def _gib(n: int) -> str:
    gib = n / 2**30
    return f"{gib:.3g} GiB" if gib < 1e6 else f"2**{n.bit_length() - 1} bytes"
