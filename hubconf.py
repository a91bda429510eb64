"""torch.hub entry points of reaf-lightning: every network of its registry, without weights.

torch.hub.load("/path/to/reaf-lightning", "reaf_resnet50", source="local", num_classes=100)
"""

from reaf_lightning.models.hub import hub_entrypoints

dependencies = ["torch", "torchvision"]

globals().update(hub_entrypoints())
