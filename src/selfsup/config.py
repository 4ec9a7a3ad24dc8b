"""Every stage's typed parameters in one place, for the Kedro layer and scripts.

Each component owns its parameter model next to its code (the encoder's in
`models/vit.py`, the masks' in `masks.py`, each method's in its module, the sources'
in `data/sources.py`, ...); this module only gathers them. Kedro builds them from
`conf/base/parameters_*.yml` when a node's argument is annotated with one, so a bad
value fails before any node runs, with a message that names the parameter and the
allowed range. The core never imports this module: dependencies point one way.
"""

from __future__ import annotations

from selfsup.data.sources import EvalSourceConfig, IngestionConfig, SplitConfig
from selfsup.evaluation import (
    EvaluationConfig,
    FeatureConfig,
    LowShotConfig,
    WeightedKnnConfig,
)
from selfsup.masks import BlockMaskConfig, MaskingConfig, MultiBlockConfig, RandomMaskConfig
from selfsup.methods.ijepa import IJEPAConfig
from selfsup.methods.mae import DecoderConfig, MAEConfig
from selfsup.methods.simclr import ProjectionHeadConfig, SimCLRAugmentationConfig, SimCLRConfig
from selfsup.methods.views import AugmentationConfig, ColourJitterConfig
from selfsup.models.predictor import PredictorConfig
from selfsup.models.vit import EncoderConfig
from selfsup.monitors import CollapseConfig, MonitorConfig
from selfsup.params import FloatRange, StrictModel, check_range, check_width
from selfsup.pretraining import PretrainingConfig
from selfsup.training import TrainingConfig

__all__ = [
    "AugmentationConfig",
    "BlockMaskConfig",
    "CollapseConfig",
    "ColourJitterConfig",
    "DecoderConfig",
    "EncoderConfig",
    "EvalSourceConfig",
    "EvaluationConfig",
    "FeatureConfig",
    "FloatRange",
    "IJEPAConfig",
    "IngestionConfig",
    "LowShotConfig",
    "MAEConfig",
    "MaskingConfig",
    "MonitorConfig",
    "MultiBlockConfig",
    "PredictorConfig",
    "PretrainingConfig",
    "ProjectionHeadConfig",
    "RandomMaskConfig",
    "SimCLRAugmentationConfig",
    "SimCLRConfig",
    "SplitConfig",
    "StrictModel",
    "TrainingConfig",
    "WeightedKnnConfig",
    "check_range",
    "check_width",
]
