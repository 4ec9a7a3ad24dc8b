"""The shared training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from selfsup import batches, precision
from selfsup.batches import BatchPlan, random_horizontal_flips, random_resized_crops
from selfsup.checkpoints import CheckpointMismatchError, TrainingCheckpoints
from selfsup.config import TrainingConfig
from selfsup.crops import crop_box, resized_crops
from selfsup.data.preprocessing import NormalizedImages, to_model_input
from selfsup.evaluation import encoder_features
from selfsup.methods import build_method
from selfsup.randomness import SampleDraws
from selfsup.training import (
    NonFiniteLossError,
    parameter_groups,
    resolve_device,
    resolve_loader_workers,
    train,
)
from tests.helpers import (
    TINY_ENCODER,
    TINY_MASKING,
    TINY_PREDICTOR,
    assert_same_weights,
    make_ijepa,
    tiny_training,
)

HISTORY_COLUMNS = {"step", "epoch", "loss", "lr", "weight_decay", "momentum"}


def run(images, seed=0, init_seed=0, **training):
    method = make_ijepa(seed=init_seed)
    config = tiny_training(**training)
    history = train(method, images, config, seed=seed)
    return method, config, history


@pytest.fixture(scope="module")
def module_images() -> torch.Tensor:
    return torch.randn(48, 1, 16, 16, generator=torch.Generator().manual_seed(123))


@pytest.fixture(scope="module")
def first_run(module_images):
    return run(module_images)


def test_history_columns_and_length(first_run, module_images):
    _, config, history = first_run
    assert HISTORY_COLUMNS <= set(history.columns)
    steps_per_epoch = len(module_images) // config.batch_size
    assert len(history) == config.epochs * steps_per_epoch == 6
    assert history["step"].tolist() == list(range(6))
    assert history["epoch"].tolist() == [0, 0, 0, 1, 1, 1]
    assert np.isfinite(history["loss"]).all()
    assert (history["loss"] > 0).all()


def test_history_schedules(first_run):
    """warmup_epochs=1 of 3 steps: lr rises start_lr -> lr, then cosine to final_lr;
    weight decay 0.04 -> 0.4; momentum 0.996 -> 1.0."""
    _, config, history = first_run
    lr = history["lr"].tolist()
    assert lr[0] == pytest.approx(config.start_lr)
    assert lr[3] == pytest.approx(config.lr)
    assert lr[-1] == pytest.approx(config.final_lr)
    assert lr[1] == pytest.approx(config.start_lr + (config.lr - config.start_lr) / 3)
    decay = history["weight_decay"].tolist()
    assert decay[0] == pytest.approx(config.weight_decay[0])
    assert decay[-1] == pytest.approx(config.weight_decay[1])
    assert decay == sorted(decay)
    momentum = history["momentum"].tolist()
    assert momentum[0] == pytest.approx(0.996)
    assert momentum[-1] == 1.0


def test_method_is_left_in_eval_mode(first_run):
    method, _, _ = first_run
    assert not method.training
    assert not any(m.training for m in method.modules())


def test_same_seed_same_history_and_weights(first_run, module_images):
    method, _, history = first_run
    method_again, _, history_again = run(module_images)
    assert history["loss"].tolist() == history_again["loss"].tolist()
    state, state_again = method.state_dict(), method_again.state_dict()
    assert state.keys() == state_again.keys()
    for name in state:
        assert torch.equal(state[name], state_again[name]), name


def test_different_seed_different_history(first_run, module_images):
    _, _, history = first_run
    _, _, other = run(module_images, seed=1)
    assert history["loss"].tolist() != other["loss"].tolist()


def test_training_changes_the_weights(first_run):
    method, _, _ = first_run
    fresh = make_ijepa(seed=0)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(
            fresh.context_encoder.parameters(), method.context_encoder.parameters(), strict=True
        )
    ]
    assert all(changed)


def _gradient_norms_at_each_step(images, **training) -> list[float]:
    """Total gradient norm of the trained parameters as the optimizer stepped (read in
    `after_optimizer_step`, before the next step clears the gradients)."""
    method = make_ijepa()
    norms = []
    scheduled_ema = method.after_optimizer_step

    def record(step, total_steps):
        grads = [p.grad for p in method.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return scheduled_ema(step, total_steps)

    method.after_optimizer_step = record
    train(method, images, tiny_training(**training), seed=0)
    return norms


def test_grad_clip_caps_the_total_gradient_norm_with_crops(module_images):
    settings = {"epochs": 1, "warmup_epochs": 0, "crop_scale": (0.5, 1.0)}
    free = _gradient_norms_at_each_step(module_images[:32], **settings)
    clip = min(free) / 2
    clipped = _gradient_norms_at_each_step(module_images[:32], grad_clip=clip, **settings)
    assert len(free) == len(clipped) == 2
    assert min(free) > clip
    assert clipped == pytest.approx([clip] * 2, rel=1e-4)


def test_stochastic_depth_draws_depend_on_the_seed_and_step_not_on_the_caller(module_images):
    """Drop-path masks come from torch's global generator, reseeded from (seed, step)
    every step: whatever a caller drew before, the same run gives the same weights."""
    dropping = TINY_ENCODER.model_copy(update={"depth": 2, "drop_path_rate": 0.5})
    # Same depth and initial weights, no stochastic depth: shows the drops were active.
    not_dropping = dropping.model_copy(update={"drop_path_rate": 0.0})
    config = tiny_training(epochs=1, warmup_epochs=0)
    weights = []
    for caller_seed, encoder in ((1, dropping), (2, dropping), (1, not_dropping)):
        torch.manual_seed(0)
        method = build_method("ijepa", {"predictor": TINY_PREDICTOR}, encoder, TINY_MASKING, 1)
        torch.manual_seed(caller_seed)
        train(method, module_images[:32], config, seed=0)
        weights.append(method.context_encoder.state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    assert any(not torch.equal(t, weights[2][name]) for name, t in weights[0].items())


def test_non_finite_loss_raises_naming_the_step(module_images, monkeypatch):
    method = make_ijepa()
    real_loss = method.training_loss
    calls = []

    def nan_on_third_step(inputs):
        calls.append(1)
        if len(calls) == 3:
            return torch.tensor(float("nan"), requires_grad=True)
        return real_loss(inputs)

    monkeypatch.setattr(method, "training_loss", nan_on_third_step)
    with pytest.raises(NonFiniteLossError, match="at step 2 ") as caught:
        train(method, module_images, tiny_training(), seed=0)
    assert "nan" in str(caught.value)
    assert isinstance(caught.value, FloatingPointError)


def test_infinite_loss_raises(module_images, monkeypatch):
    method = make_ijepa()
    monkeypatch.setattr(
        method, "training_loss", lambda inputs: torch.tensor(math.inf, requires_grad=True)
    )
    with pytest.raises(NonFiniteLossError, match="at step 0 "):
        train(method, module_images, tiny_training(), seed=0)


def test_batch_larger_than_data_raises(module_images):
    method = make_ijepa()
    with pytest.raises(ValueError, match="batch_size=64"):
        train(method, module_images, tiny_training(batch_size=64), seed=0)


def test_parameter_groups_keep_biases_and_1d_params_out_of_decay():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    module.register_parameter("scale", torch.nn.Parameter(torch.ones(5)))
    module.register_parameter("frozen", torch.nn.Parameter(torch.ones(2, 2), requires_grad=False))
    decay, no_decay = parameter_groups(module)
    assert decay["apply_weight_decay"] and not no_decay["apply_weight_decay"]
    assert no_decay["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(decay["params"]) == {id(module[0].weight)}
    assert ids(no_decay["params"]) == {
        id(module[0].bias),
        id(module[1].weight),
        id(module[1].bias),
        id(module.scale),
    }


def test_parameter_groups_of_ijepa():
    method = make_ijepa()
    decay, no_decay = parameter_groups(method)
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    trainable = [id(p) for p in method.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    assert not {id(p) for p in method.target_encoder.parameters()} & set(grouped)
    assert all(p.ndim >= 2 for p in decay["params"])
    biases = {
        id(p) for n, p in method.named_parameters() if n.endswith(".bias") and p.requires_grad
    }
    assert biases
    assert biases <= {id(p) for p in no_decay["params"]}
    assert all(p.ndim <= 1 or id(p) in biases for p in no_decay["params"])


def test_weight_decay_is_applied_to_matrices_only(module_images):
    """With zero gradients AdamW only decays: each step multiplies decayed weights by
    (1 - lr * weight_decay) and leaves biases and LayerNorm weights alone."""
    method = make_ijepa()
    encoder = method.context_encoder
    bias_before = encoder.norm.bias.detach().clone()
    norm_before = encoder.norm.weight.detach().clone()
    weight_before = encoder.blocks[0].attn.qkv.weight.detach().clone()

    def zero_loss(inputs):
        return sum((p * 0).sum() for p in method.parameters() if p.requires_grad)

    method.training_loss = zero_loss
    config = tiny_training(epochs=1, warmup_epochs=0, lr=0.1, weight_decay=(0.5, 0.2))
    history = train(method, module_images[:32], config, seed=0)
    assert len(history) == 2
    shrink = float(np.prod(1 - history["lr"] * history["weight_decay"]))
    assert shrink < 0.99
    assert torch.equal(encoder.norm.bias, bias_before)
    assert torch.equal(encoder.norm.weight, norm_before)
    torch.testing.assert_close(
        encoder.blocks[0].attn.qkv.weight.detach(), weight_before * shrink, atol=1e-7, rtol=1e-6
    )


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="training.device=cuda"):
            resolve_device("cuda")


def test_random_resized_crops_are_per_image_and_keyed_by_row():
    image = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    images = image.repeat(6, 1, 1, 1)
    draws = SampleDraws(1, 0, 0, np.arange(6))
    crops = random_resized_crops(images, (0.2, 0.5), draws)
    again = random_resized_crops(images, (0.2, 0.5), draws)
    assert crops.shape == images.shape
    assert torch.equal(crops, again)
    # Identical inputs, different crops: one crop per image, not one per call.
    assert len({tuple(c.flatten().tolist()) for c in crops}) == 6
    assert not torch.equal(crops[0], image[0])
    # A row's crop depends on its row and epoch, not its position in the batch.
    reordered = random_resized_crops(images[:2], (0.2, 0.5), SampleDraws(1, 0, 7, np.array([4, 1])))
    assert torch.equal(reordered[0], crops[4]) and torch.equal(reordered[1], crops[1])
    next_epoch = random_resized_crops(images, (0.2, 0.5), SampleDraws(1, 1, 0, np.arange(6)))
    assert not torch.equal(next_epoch, crops)
    # The global torch RNG is left alone.
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    random_resized_crops(images, (0.2, 0.5), draws)
    assert torch.equal(torch.rand(1), expected_next)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 24, 40), (2, 17, 9)])
def test_resized_crops_equal_torchvisions_resized_crop_image_by_image(shape):
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(40, *shape, generator=generator)
    height, width = shape[1:]
    rng = np.random.default_rng(0)
    boxes = [crop_box(rng, height, width, (0.05, 1.0)) for _ in range(39)]
    boxes.append((0, 0, height, width))  # the whole image: returned as it is
    out = resized_crops(images, torch.tensor(boxes))
    expected = torch.stack(
        [
            v2.functional.resized_crop(image, *box, [height, width], antialias=True)
            for image, box in zip(images, boxes, strict=True)
        ]
    )
    assert out.shape == images.shape
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(out[-1], images[-1], atol=1e-6, rtol=0)


def test_crop_boxes_follow_torchvisions_rule():
    rng = np.random.default_rng(1)
    scale, ratio = (0.3, 0.8), (0.75, 4 / 3)
    boxes = np.array([crop_box(rng, 32, 48, scale, ratio) for _ in range(4000)])
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 32).all() and (left + width <= 48).all()
    # Rounding the sides to whole pixels moves area and aspect by at most half a pixel.
    area = height * width / (32 * 48)
    assert area.min() > scale[0] * 0.9 and area.max() < scale[1] * 1.1
    aspect = width / height
    assert aspect.min() > ratio[0] * 0.9 and aspect.max() < ratio[1] * 1.1
    # Means against torchvision's own draws of the same transform.
    crop = v2.RandomResizedCrop([32, 48], scale=scale, ratio=ratio)
    torch.manual_seed(0)
    reference = np.array(
        [
            [p["height"], p["width"]]
            for p in (crop.make_params([torch.zeros(1, 32, 48)]) for _ in range(4000))
        ]
    )
    assert abs(area.mean() - (reference.prod(axis=1) / (32 * 48)).mean()) < 0.01
    assert abs(aspect.mean() - (reference[:, 1] / reference[:, 0]).mean()) < 0.02
    # No draw fits (every aspect ratio is wider than the image allows at full area):
    # torchvision's centre crop of the widest allowed ratio.
    assert crop_box(np.random.default_rng(2), 32, 32, (1.0, 1.0), (2.0, 3.0)) == (8, 0, 16, 32)


def test_horizontal_flips_mirror_about_half_the_rows_each_keyed_by_its_row():
    images = torch.randn(200, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    draws = SampleDraws(3, 0, 0, np.arange(200))
    flipped = random_horizontal_flips(images, 0.5, draws)
    mirrored = [torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images, strict=True)]
    unchanged = [torch.equal(f, i) for f, i in zip(flipped, images, strict=True)]
    assert all(m != u for m, u in zip(mirrored, unchanged, strict=True))  # one or the other
    assert 70 < sum(mirrored) < 130  # binomial(200, 0.5): 100 +- 7
    assert torch.equal(random_horizontal_flips(images, 0.5, draws), flipped)
    subset = random_horizontal_flips(images[[7, 3]], 0.5, SampleDraws(3, 0, 9, np.array([7, 3])))
    assert torch.equal(subset[0], flipped[7]) and torch.equal(subset[1], flipped[3])
    assert torch.equal(random_horizontal_flips(images, 0.0, draws), images)
    assert torch.equal(random_horizontal_flips(images, 1.0, draws), images.flip(-1))


def test_training_applies_the_configured_flips(module_images):
    settings = {"epochs": 1, "warmup_epochs": 0}
    plain, _, _ = run(module_images[:32], **settings)
    flipping, _, _ = run(module_images[:32], horizontal_flip_p=0.5, **settings)
    mirrored_data, _, _ = run(module_images[:32].flip(-1), horizontal_flip_p=1.0, **settings)
    assert not torch.equal(
        plain.context_encoder.patch_embed.proj.weight,
        flipping.context_encoder.patch_embed.proj.weight,
    )
    # Flipping every image of mirrored data trains exactly as the original data.
    for (name, a), (_, b) in zip(
        plain.state_dict().items(), mirrored_data.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_memory_mapped_batches_train_exactly_like_the_tensor(tmp_path):
    """Reading each batch from a memory-mapped uint8 .npy (datasets larger than memory)
    gives the same losses and weights as the whole normalized tensor."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (40, 16, 16, 1), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    rows = np.arange(40) % 5 != 0  # 32 pretraining rows
    normalization = {"mean": [0.4], "std": [0.25]}

    method_a, _, history_a = run(to_model_input(images[rows], normalization), crop_scale=(0.5, 1))
    method_b, _, history_b = run(NormalizedImages(mapped, normalization, rows), crop_scale=(0.5, 1))
    assert history_a["loss"].tolist() == history_b["loss"].tolist()
    for (name, a), (_, b) in zip(
        method_a.state_dict().items(), method_b.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


class RowCountingArray:
    """A uint8 (N, H, W, C) array that records how many rows each read takes, standing
    in for a memory-mapped file larger than memory."""

    def __init__(self, images: np.ndarray) -> None:
        self._images = images
        self.shape, self.dtype = images.shape, images.dtype
        self.reads: list[int] = []

    def __getitem__(self, index):
        rows = self._images[index]
        self.reads.append(len(rows))
        return rows


def test_training_and_feature_extraction_read_one_batch_of_rows_at_a_time():
    images = RowCountingArray(np.random.default_rng(6).integers(0, 256, (64, 16, 16, 1), np.uint8))
    view = NormalizedImages(images, {"mean": [0.5], "std": [0.2]})
    method, config, _ = run(view, batch_size=16)
    assert images.reads and max(images.reads) == 16
    assert len(images.reads) == config.epochs * 64 // 16

    images.reads.clear()
    features = encoder_features(method.target_encoder, view, batch_size=24)
    assert features.shape[0] == 64
    assert images.reads == [24, 24, 16]


class Interrupted(RuntimeError):
    pass


def _stop_after(steps: int):
    def on_step(row: dict) -> None:
        if row["step"] + 1 == steps:
            raise Interrupted

    return on_step


@pytest.mark.parametrize("every, stop", [(3, 7), (4, 10), (5, 14), (6, 6)])
def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path, module_images, every, stop
):
    """48 images / batch 16 = 3 steps per epoch, 5 epochs. The interruption comes as step
    `stop` ends, before its own checkpoint: the last one is then at an epoch boundary
    (6), mid-epoch (8, 10), or missing (a fresh start). Crops and masks draw from every
    random stream."""
    training = {"epochs": 5, "crop_scale": (0.5, 1.0), "checkpoint_every": every}
    identity = {"run": "test"}
    reference, _, reference_history = run(module_images, **training)

    folder = tmp_path / "checkpoints"
    first = make_ijepa(seed=0)
    with pytest.raises(Interrupted):
        train(
            first,
            module_images,
            tiny_training(**training),
            seed=0,
            on_step=_stop_after(stop),
            checkpoints=TrainingCheckpoints(folder, every, 2, identity),
        )
    saved = sorted(p.name for p in folder.glob("step-*.pt"))
    last = (stop - 1) // every * every
    assert saved[-1:] == ([f"step-{last:08d}.pt"] if last else [])
    assert len(saved) <= 2

    replayed = []
    # With a checkpoint, other initial weights: all must come from the checkpoint.
    resumed = make_ijepa(seed=99 if last else 0)
    history = train(
        resumed,
        module_images,
        tiny_training(**training, resume=True),
        seed=0,
        on_step=replayed.append,
        checkpoints=TrainingCheckpoints(folder, every, 2, identity),
    )
    for (name, a), (_, b) in zip(
        reference.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert history["loss"].tolist() == reference_history["loss"].tolist()
    assert [row["step"] for row in replayed] == list(range(15))
    assert sorted(p.name for p in folder.glob("step-*.pt"))[-1] == "step-00000015.pt"


def test_checkpoints_load_with_weights_only_and_refuse_another_run(tmp_path, module_images):
    folder = tmp_path / "checkpoints"
    config = tiny_training(epochs=1, checkpoint_every=1, keep_checkpoints=2)
    method = make_ijepa()
    train(method, module_images, config, 0, checkpoints=TrainingCheckpoints(folder, 1, 2, {"a": 1}))
    # 3 steps, every step saved, the last 2 kept, no temporary files left.
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000002.pt", "step-00000003.pt"]
    state = torch.load(folder / "step-00000003.pt", weights_only=True)
    assert state["step"] == 3 and state["identity"] == {"a": 1}
    assert set(state["method"]) == set(method.state_dict())
    with pytest.raises(CheckpointMismatchError, match="resume: false"):
        TrainingCheckpoints(folder, 1, 2, {"a": 2}).load_latest()


def test_a_fresh_run_replaces_old_checkpoints(tmp_path, module_images):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "step-00000099.pt").write_bytes(b"stale")
    train(
        make_ijepa(),
        module_images,
        tiny_training(epochs=1),
        0,
        checkpoints=TrainingCheckpoints(folder, None, 2, {}),
    )
    assert [p.name for p in folder.iterdir()] == ["step-00000003.pt"]


@pytest.mark.parametrize("native_bf16", [False, True])
def test_auto_precision_on_cpu_follows_native_bf16(module_images, monkeypatch, native_bf16):
    """auto = bf16 on CPUs with native bf16 matrix instructions, fp32 elsewhere (each
    identical to asking for it); bf16 trains with finite losses close to fp32's."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    _, _, fp32 = run(module_images, precision="fp32")
    _, _, auto = run(module_images, precision="auto")
    _, _, bf16 = run(module_images, precision="bf16")
    assert auto["loss"].tolist() == (bf16 if native_bf16 else fp32)["loss"].tolist()
    assert np.isfinite(bf16["loss"]).all()
    assert bf16["loss"].tolist() != fp32["loss"].tolist()
    np.testing.assert_allclose(bf16["loss"], fp32["loss"], rtol=0.05)


@pytest.mark.parametrize(("dtype", "fused"), [(torch.float32, True), (torch.bfloat16, False)])
def test_attention_kernel_follows_the_precision(monkeypatch, dtype, fused):
    """torch's fused attention in float32; two batched products in bf16 on the CPU,
    where the fused kernel is slow (selfsup.models.tokens.attention)."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    method = make_ijepa()
    images = torch.randn(4, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = method.loss_on(images, SampleDraws.first_batch(4))
    assert torch.isfinite(loss)
    assert bool(calls) == fused


def test_dataloader_workers_give_the_same_training(tmp_path):
    """Batches read by DataLoader worker processes equal those read in the loop."""
    images = np.random.default_rng(8).integers(0, 256, (40, 16, 16, 1), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    view = NormalizedImages(mapped, {"mean": [0.4], "std": [0.25]})
    method_a, _, history_a = run(view, crop_scale=(0.5, 1))
    method_b, _, history_b = run(view, crop_scale=(0.5, 1), loader_workers=2)
    assert history_a["loss"].tolist() == history_b["loss"].tolist()
    for (name, a), (_, b) in zip(
        method_a.state_dict().items(), method_b.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_compiled_training_matches_eager(first_run, module_images):
    """training.compile: the same losses and weights as eager, to float rounding. Slow
    (about 45 s on 2 cores: I-JEPA's context length changes, so it compiles twice)."""
    eager, _, eager_history = first_run
    compiled, _, history = run(module_images, compile=True)
    np.testing.assert_allclose(history["loss"], eager_history["loss"], rtol=1e-5)
    assert_same_weights(compiled.state_dict(), eager.state_dict(), atol=1e-5, rtol=1e-4)


def test_compile_without_a_cpp_compiler_is_refused_before_training(module_images, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(
        RuntimeError, match="training.compile: true on CPU needs a C\\+\\+ compiler"
    ):
        run(module_images, compile=True)


def test_loader_workers_auto_is_four_on_cuda_and_none_on_cpu():
    assert resolve_loader_workers("auto", torch.device("cuda")) == 4
    assert resolve_loader_workers("auto", torch.device("cpu")) == 0
    assert resolve_loader_workers(3, torch.device("cpu")) == 3
    assert TrainingConfig().loader_workers == "auto"
    with pytest.raises(ValueError, match="loader_workers"):
        TrainingConfig(loader_workers=-1)
    with pytest.raises(ValueError, match="loader_workers"):
        TrainingConfig(loader_workers="many")


def test_one_loader_serves_every_epoch(tmp_path, monkeypatch):
    """Loader workers start once per run, not once per epoch (on a GPU a small model's
    epoch lasts about as long as starting them)."""
    images = np.random.default_rng(9).integers(0, 256, (40, 16, 16, 1), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    view = NormalizedImages(
        np.load(tmp_path / "images.npy", mmap_mode="r"), {"mean": [0.4], "std": [0.25]}
    )
    loaders = []
    real_loader = batches.DataLoader

    def counted(*args, **kwargs):
        loaders.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(batches, "DataLoader", counted)
    _, _, history = run(view, loader_workers=1, epochs=3)
    assert loaders == [1]
    assert history["epoch"].tolist() == [e for e in range(3) for _ in range(len(history) // 3)]


def test_remaining_micro_batches_continue_epoch_after_epoch():
    plan = BatchPlan(8)
    expected = [
        draws
        for epoch in range(3)
        for draws in plan.micro_batches(40, seed=5, epoch=epoch, first_step=7)
    ]
    remaining = list(plan.remaining_micro_batches(40, seed=5, first_step=7, epochs=3))
    assert [d.step for d in remaining] == list(range(7, 15))
    assert [d.step for d in remaining] == [d.step for d in expected]
    for a, b in zip(remaining, expected, strict=True):
        assert np.array_equal(a.indices, b.indices)
