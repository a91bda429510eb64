"""Model zoo: ResNet, WideResNet, ResNeXt, MobileNetV2; plain, REAF, REAF+ (paper Tables 1-7)."""

from reaf_lightning.models import variants as _variants  # noqa: F401  (registers the names)
from reaf_lightning.models.mobilenetv2 import MobileNetV2
from reaf_lightning.models.registry import create_model, list_models, register_model
from reaf_lightning.models.resnet import ResNet

__all__ = ["MobileNetV2", "ResNet", "create_model", "list_models", "register_model"]
