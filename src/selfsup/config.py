"""Typed, validated parameters for every stage.

Kedro instantiates these models from `conf/base/parameters_*.yml` when it builds the
catalog (node arguments are annotated with them), so a bad value fails before any node
runs, with a message that names the parameter and the allowed range. The models are
plain Pydantic and are used the same way outside Kedro.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FloatRange = tuple[float, float]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_range(
    name: str,
    value: FloatRange,
    low: float,
    high: float,
    *,
    low_open: bool = True,
    high_open: bool = False,
) -> FloatRange:
    """Check that `value` is an ordered pair inside (low, high]; raise naming `name`."""
    lo, hi = value
    left, right = ("(" if low_open else "["), (")" if high_open else "]")
    allowed = f"{left}{low}, {high}{right}"
    below = lo <= low if low_open else lo < low
    above = hi >= high if high_open else hi > high
    if below or above or lo > hi:
        raise ValueError(
            f"{name}={list(value)} is invalid: both ends must lie in {allowed} "
            f"and the first must not exceed the second"
        )
    return value


def check_width(prefix: str, embed_dim: int, num_heads: int) -> None:
    """Attention heads must split the width, and 2-D sin-cos positions need a multiple of 4."""
    if embed_dim % num_heads or embed_dim % 4:
        raise ValueError(
            f"{prefix}.embed_dim={embed_dim} must be divisible by "
            f"{prefix}.num_heads={num_heads} and by 4"
        )


class SplitConfig(StrictModel):
    """Fractions of the labelled set held out for validation and test (stratified)."""

    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _leave_a_train_split(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(
                f"split.val + split.test = {self.val + self.test} must be below 1 "
                "so that a train split remains"
            )
        return self


def _known_source_name(name: str, key: str) -> str:
    from selfsup.data.sources import SOURCES

    if name not in SOURCES:
        raise ValueError(
            f"unknown source {name!r} in ingestion.{key}; choose one of {sorted(SOURCES)}"
        )
    return name


class EvalSourceConfig(StrictModel):
    """A second, labelled source whose images the probes are trained and scored on."""

    source: str
    options: dict = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _known_source(cls, name: str) -> str:
        return _known_source_name(name, "eval_source.source")


class IngestionConfig(StrictModel):
    """Where images come from. `source` is looked up in `selfsup.data.sources.SOURCES`.

    Without `eval_source`, a labelled source is split into train (pretrained on and
    probed), val and test; an unlabelled one can only be pretrained on. With
    `eval_source`, every image of `source` (labelled or not) is pretrained on and
    `eval_source` is split for the probes."""

    source: str = "digits"
    options: dict = Field(default_factory=dict)
    eval_source: EvalSourceConfig | None = None
    split: SplitConfig = SplitConfig()
    # More rejected files than this fraction of all files is an error, not a warning.
    max_rejected_fraction: float = Field(0.01, ge=0, le=1)

    @field_validator("source")
    @classmethod
    def _known_source(cls, name: str) -> str:
        return _known_source_name(name, "source")


class MultiBlockConfig(StrictModel):
    """I-JEPA multi-block masking; defaults are the paper's (Assran et al., 2023)."""

    num_targets: int = Field(4, ge=1, le=16)
    target_scale: FloatRange = (0.15, 0.2)
    target_aspect_ratio: FloatRange = (0.75, 1.5)
    context_scale: FloatRange = (0.85, 1.0)
    context_aspect_ratio: FloatRange = (1.0, 1.0)
    min_keep: int = Field(4, ge=1)
    max_tries: int = Field(100, ge=1)
    # per_image: every context keeps its own patches; batch_min: each context is
    # subsampled at random to the shortest of its batch (selfsup.masks).
    context_length: Literal["per_image", "batch_min"] = "per_image"

    @field_validator("target_scale", "context_scale")
    @classmethod
    def _scale_in_unit_interval(cls, value: FloatRange, info) -> FloatRange:
        return check_range(f"multiblock.{info.field_name}", value, 0.0, 1.0)

    @field_validator("target_aspect_ratio", "context_aspect_ratio")
    @classmethod
    def _positive_aspect_ratio(cls, value: FloatRange, info) -> FloatRange:
        return check_range(f"multiblock.{info.field_name}", value, 0.0, math.inf, high_open=True)


class BlockMaskConfig(StrictModel):
    """The paper's `block` ablation: one target block (average 0.6 of the image),
    context = its complement."""

    target_scale: FloatRange = (0.6, 0.6)
    target_aspect_ratio: FloatRange = (0.75, 1.5)

    @field_validator("target_scale")
    @classmethod
    def _scale_in_unit_interval(cls, value: FloatRange) -> FloatRange:
        return check_range("block.target_scale", value, 0.0, 1.0)

    @field_validator("target_aspect_ratio")
    @classmethod
    def _positive_aspect_ratio(cls, value: FloatRange) -> FloatRange:
        return check_range("block.target_aspect_ratio", value, 0.0, math.inf, high_open=True)


class RandomMaskConfig(StrictModel):
    """The paper's `random` ablation: this fraction of patches, drawn at random, is the
    target; the rest is the context."""

    target_ratio: float = Field(0.6, gt=0, lt=1)


MaskingStrategy = Literal["multiblock", "rasterized", "block", "random"]


class MaskingConfig(StrictModel):
    """Image size, patch grid and the I-JEPA mask sampler.

    `strategy` selects the sampler; each strategy reads only its own block
    (`multiblock`, `block`, `random`; `rasterized` has no parameters).
    """

    image_size: int = Field(32, ge=1)
    patch_size: int = Field(4, ge=1)
    strategy: MaskingStrategy = "multiblock"
    multiblock: MultiBlockConfig = MultiBlockConfig()
    block: BlockMaskConfig = BlockMaskConfig()
    random: RandomMaskConfig = RandomMaskConfig()
    preview_images: int = Field(6, ge=1, le=32)
    stats_num_masks: int = Field(2000, ge=1)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @model_validator(mode="after")
    def _grid_and_masks_are_feasible(self) -> MaskingConfig:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"masking.image_size={self.image_size} is not divisible by "
                f"masking.patch_size={self.patch_size}; pick sizes such that "
                "image_size % patch_size == 0"
            )
        if self.grid_size < 2:
            raise ValueError(
                f"masking.image_size / masking.patch_size = {self.grid_size}: the patch "
                "grid needs at least 2x2 patches (8x8 or more recommended)"
            )
        if self.strategy == "multiblock" and self.multiblock.min_keep >= self.num_patches:
            raise ValueError(
                f"masking.multiblock.min_keep={self.multiblock.min_keep} must be below the "
                f"number of patches ({self.num_patches})"
            )
        # Imported here: masks.py depends on this module for its types.
        from selfsup.masks import MaskSamplingError, build_mask_sampler

        try:
            build_mask_sampler(self).check_feasible()
        except MaskSamplingError as error:
            raise ValueError(str(error)) from None
        return self


class EncoderConfig(StrictModel):
    """ViT encoder shared by every method so comparisons are fair."""

    embed_dim: int = Field(192, ge=4)
    depth: int = Field(6, ge=1)
    num_heads: int = Field(3, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    # xavier: MAE's official code; trunc_normal: I-JEPA's (selfsup.models.vit.init_weights).
    weight_init: Literal["xavier", "trunc_normal"] = "xavier"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> EncoderConfig:
        check_width("encoder", self.embed_dim, self.num_heads)
        return self


class PredictorConfig(StrictModel):
    """The narrow I-JEPA predictor (paper: width 384 for ViT-B/L/H)."""

    embed_dim: int = Field(96, ge=4)
    depth: int = Field(3, ge=1)
    num_heads: int = Field(3, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    # per_block (the paper): the context repeated once per target block; shared: the
    # context once, each block's queries attending to it and their own block
    # (selfsup.models.predictor).
    context: Literal["per_block", "shared"] = "per_block"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> PredictorConfig:
        check_width("predictor", self.embed_dim, self.num_heads)
        return self


class TrainingConfig(StrictModel):
    """Optimizer and schedules, identical in form for every method."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 matrix instructions
    # (AMX, AVX512-BF16), fp32 elsewhere (selfsup.precision).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    start_lr: float = Field(1e-4, ge=0)
    final_lr: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(2, ge=0)
    weight_decay: FloatRange = (0.04, 0.4)
    betas: FloatRange = (0.9, 0.999)
    grad_clip: float | None = Field(None, gt=0)
    crop_scale: FloatRange | None = None
    # Mirror each training image left to right with this probability, after the crop
    # (MAE's recipe on photos: 0.5; I-JEPA's: none).
    horizontal_flip_p: float = Field(0.0, ge=0, le=1)
    num_threads: int | None = Field(None, ge=1)
    # DataLoader processes that read, normalize, crop and mask batches ahead of the
    # step (0: the training process does it between steps; auto: 4 on CUDA, where the
    # GPU would otherwise wait for them, 0 on CPU, where they would compete with the
    # step for cores); results do not depend on it.
    loader_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    # Micro-batches per process and step: the gradient of batch_size images is summed
    # from accumulation_steps smaller forward/backward passes (less memory, same
    # result; SimCLR's negatives then come from one micro-batch, not the whole batch).
    accumulation_steps: int = Field(1, ge=1)
    # torch.compile the training step's model (faster on GPU after a compile of about
    # a minute; needs a C++ compiler on CPU).
    compile: bool = False
    # A checkpoint every this many steps (and always one at the end); the last
    # `keep_checkpoints` are kept. `resume: true` continues from the newest one.
    checkpoint_every: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = False

    @field_validator("weight_decay")
    @classmethod
    def _non_negative_decay(cls, value: FloatRange) -> FloatRange:
        if min(value) < 0:
            raise ValueError(f"training.weight_decay={list(value)} must be >= 0")
        return value

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, value: FloatRange) -> FloatRange:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"training.betas={list(value)} must lie in [0, 1)")
        return value

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_in_unit_interval(cls, value: FloatRange | None) -> FloatRange | None:
        return None if value is None else check_range("training.crop_scale", value, 0, 1)

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"training.warmup_epochs={self.warmup_epochs} exceeds training.epochs={self.epochs}"
            )
        return self


class IJEPAConfig(StrictModel):
    """Method-specific I-JEPA parameters (masking is shared, in `masking`)."""

    predictor: PredictorConfig = PredictorConfig()
    loss: Literal["l2", "smooth_l1"] = "l2"
    ema_momentum: FloatRange = (0.996, 1.0)

    @field_validator("ema_momentum")
    @classmethod
    def _momentum_in_unit_interval(cls, value: FloatRange) -> FloatRange:
        return check_range("hyperparameters.ema_momentum", value, 0.0, 1.0)


class DecoderConfig(StrictModel):
    """The MAE decoder (paper: width 512, depth 8, 16 heads for ViT-L, whose encoder is
    1024 wide and 24 deep); its ablation finds deeper decoders give better linear probes."""

    embed_dim: int = Field(128, ge=4)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> DecoderConfig:
        check_width("decoder", self.embed_dim, self.num_heads)
        return self


class MAEConfig(StrictModel):
    """Method-specific MAE parameters; the paper's defaults."""

    mask_ratio: float = Field(0.75, gt=0, lt=1)
    norm_pix_loss: bool = True
    decoder: DecoderConfig = DecoderConfig()


class ProjectionHeadConfig(StrictModel):
    """SimCLR's projection head g: a 2-layer MLP with ReLU (the paper's v1 head)."""

    hidden_dim: int = Field(512, ge=1)
    out_dim: int = Field(128, ge=1)


class ColourJitterConfig(StrictModel):
    """torchvision ColorJitter with the paper's strength parametrization: brightness,
    contrast, saturation 0.8*s and hue 0.2*s, applied with probability p. On
    single-channel images only brightness and contrast apply."""

    strength: float = Field(0.5, ge=0)
    p: float = Field(0.8, ge=0, le=1)


class SimCLRAugmentationConfig(StrictModel):
    """Per-view augmentations (torchvision v2), each configurable; paper defaults except
    blur, which is off for small images as in the paper's CIFAR-10 setup."""

    crop_scale: FloatRange = (0.08, 1.0)
    crop_ratio: FloatRange = (0.75, 4 / 3)
    horizontal_flip_p: float = Field(0.5, ge=0, le=1)
    colour_jitter: ColourJitterConfig = ColourJitterConfig()
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.0, ge=0, le=1)
    blur_sigma: FloatRange = (0.1, 2.0)

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_in_unit_interval(cls, value: FloatRange) -> FloatRange:
        return check_range("augmentations.crop_scale", value, 0.0, 1.0)

    @field_validator("crop_ratio", "blur_sigma")
    @classmethod
    def _positive_range(cls, value: FloatRange, info) -> FloatRange:
        return check_range(f"augmentations.{info.field_name}", value, 0.0, math.inf, high_open=True)


class SimCLRConfig(StrictModel):
    """Method-specific SimCLR parameters."""

    temperature: float = Field(0.2, gt=0)
    projection_head: ProjectionHeadConfig = ProjectionHeadConfig()
    augmentations: SimCLRAugmentationConfig = SimCLRAugmentationConfig()


class CollapseConfig(StrictModel):
    """When the monitors call a representation collapsed: RankMe below `rankme_fraction`
    of the feature dimension, or the normalized feature std below `std_fraction` /
    sqrt(dimension), for `patience` checks in a row; then warn or stop the run."""

    rankme_fraction: float = Field(0.03, ge=0, le=1)
    std_fraction: float = Field(0.01, ge=0)
    patience: int = Field(3, ge=1)
    on_collapse: Literal["warn", "stop"] = "warn"


class MonitorConfig(StrictModel):
    """Representation monitors during pretraining (`selfsup.monitors`)."""

    # RankMe, normalized std (and I-JEPA's prediction cosine) on a held-out batch every
    # this many steps (null: never).
    every_steps: int | None = Field(20, ge=1)
    held_out_images: int = Field(256, ge=2)
    # kNN accuracy on the val split every this many epochs (null: never), with the
    # evaluation pipeline's protocol; the train split is subsampled to at most
    # knn_max_train_images.
    knn_every_epochs: int | None = Field(5, ge=1)
    knn_k: int = Field(20, ge=1)
    knn_max_train_images: int = Field(10000, ge=1)
    collapse: CollapseConfig = CollapseConfig()


class PretrainingConfig(StrictModel):
    """One pretraining run: which method, its hyperparameters and the training recipe.

    `hyperparameters` is validated by the method's own config class
    (`selfsup.methods.METHODS[method].config_class`), so a new method brings its
    parameters without changes here.
    """

    method: str
    hyperparameters: dict = Field(default_factory=dict)
    training: TrainingConfig = TrainingConfig()
    monitors: MonitorConfig = MonitorConfig()

    @model_validator(mode="after")
    def _known_method_with_valid_hyperparameters(self) -> PretrainingConfig:
        from pydantic import ValidationError

        from selfsup.methods import METHODS

        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(METHODS)}")
        try:
            METHODS[self.method].config_class.model_validate(self.hyperparameters)
        except ValidationError as error:
            raise ValueError(f"{self.method} hyperparameters: {error}") from None
        return self


class FeatureConfig(StrictModel):
    """How frozen features are read from an encoder."""

    pooling: Literal["last", "last4", "grid"] = "last"
    grid_cells: int = Field(4, ge=1)  # cells per side of `grid`'s token-mean grid
    batch_size: int = Field(256, ge=1)


class LowShotConfig(StrictModel):
    shots: list[int] = Field(default_factory=lambda: [1, 5, 10])
    draws: int = Field(5, ge=1)

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, shots: list[int]) -> list[int]:
        if not shots or min(shots) < 1:
            raise ValueError(f"evaluation.low_shot.shots={shots} must be positive")
        return shots


class EvaluationConfig(StrictModel):
    """Linear probe, low-shot probe and kNN protocols."""

    c_grid: list[float] = Field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0, 100.0])
    max_iter: int = Field(2000, ge=10)
    # lbfgs stops once the gradient is this small. At scikit-learn's 1e-4 the fits stop
    # where the BLAS kernel leaves them, and low-shot means moved by up to 0.3 points
    # between OpenBLAS's kernels for two processors; at 1e-8 they agree exactly.
    tol: float = Field(1e-8, gt=0, le=1e-2)
    low_shot: LowShotConfig = LowShotConfig()
    knn_k: int = Field(20, ge=1)

    @field_validator("c_grid")
    @classmethod
    def _positive_grid(cls, grid: list[float]) -> list[float]:
        if not grid or min(grid) <= 0:
            raise ValueError(f"evaluation.c_grid={grid} must hold positive values")
        return grid
