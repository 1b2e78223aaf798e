"""The example data sets and models that training configs name
(`@datasets = "spirals.v1"`, `@models = "mlp.v1"`): small, seeded, and written
once against `ops.xp` so that they run on numpy and cupy alike."""

from optsvc.toys.datasets import Dataset, blobs, regression, spirals
from optsvc.toys.models import Model, linear, mlp

__all__ = ["Dataset", "blobs", "spirals", "regression", "Model", "linear", "mlp"]
