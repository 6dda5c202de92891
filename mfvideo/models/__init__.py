"""models stage of the mfvideo flow: MViTv2 backbones, the MaskFeat pretraining model, the video classifier, the
action detector (AVA).

Every model takes a batch dict and returns a dict with "loss" (when the batch carries what the loss needs); which
model a recipe builds is decided by its task (`mfvideo.tasks`)."""

from mfvideo.models.checkpoint import load_pretrained
from mfvideo.models.classifier import MViTClassifier
from mfvideo.models.detector import Detector
from mfvideo.models.maskfeat import MaskFeat
from mfvideo.models.mvit import MViTConfig

__all__ = ["Detector", "load_pretrained", "MaskFeat", "MViTClassifier", "MViTConfig"]
