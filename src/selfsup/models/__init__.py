"""Vision Transformer parts built on timm's blocks."""

from selfsup.models.predictor import Predictor
from selfsup.models.vit import VisionTransformerEncoder, build_encoder

__all__ = ["Predictor", "VisionTransformerEncoder", "build_encoder"]
