"""The model zoo. Importing this package registers every family (one module each)."""

# importing registers the builders; `cnnbench models` lists them in this order (of publication)
from cnnbench.models import (lenet, alexnet, vgg, googlenet, resnet, cifar_resnet,  # noqa: F401
                             densenet, mobilenet, fcn, unet, segnet, rcnn, faster_rcnn, yolo, ssd, external)
from cnnbench.models.registry import ModelInfo, create_model, get_model_info, list_models

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models"]
