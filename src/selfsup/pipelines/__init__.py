"""Kedro pipelines: thin nodes over the `selfsup` core."""

from selfsup.settings import BASELINE_NAMESPACES as BASELINES
from selfsup.settings import PRETRAINED_NAMESPACES as PRETRAINED

__all__ = ["BASELINES", "PRETRAINED"]
