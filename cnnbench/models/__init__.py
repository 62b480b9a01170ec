"""The model zoo. Importing this package registers every family (one module each)."""

from cnnbench.models import lenet, resnet  # noqa: F401  (registers the builders)
from cnnbench.models.registry import ModelInfo, create_model, get_model_info, list_models

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models"]
