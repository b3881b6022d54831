"""TIGER assembled with tiny real experts: frozen parts, routing outputs, counterfactual objective."""

from dataclasses import replace

import pytest
import torch

from tiger import checkpoint
from tiger.model.build import build_tiger
from tiger.training.losses import (
    TigerLoss,
    causal_importance,
    counterfactual_delta,
    counterfactual_loss,
    pixel_loss,
    pool_to_grid,
)
from tiger.model import remove_expert
from tiger.options import OptionError

TASKS = ["semseg", "depth", "normals", "edge"]
EXPERTS = {"clip": {"name": "clip_tiny"}, "dinov2": {"name": "dinov2_tiny"}, "sam": {"name": "sam_tiny"}}
SIZE = (40, 48)


def tiny_tiger(grid=(3, 4), **options):
    torch.manual_seed(0)
    settings = dict(dim=32, rank=4, hyper_hidden=16, query_width=16, num_heads=4, decoder_width=32)
    settings.update(options)
    return build_tiger(
        EXPERTS, TASKS, grid=grid, num_semseg_classes=5, instructions={"encoder": None}, **settings
    )


def targets(batch=2):
    g = torch.Generator().manual_seed(1)
    h, w = SIZE
    normals = torch.nn.functional.normalize(torch.randn(batch, 3, h, w, generator=g), dim=1)
    semseg = torch.randint(0, 5, (batch, h, w), generator=g)
    semseg[:, :14] = 255  # the first token row (adaptive pooling cell: pixel rows 0-13)
    return {
        "semseg": semseg,
        "depth": torch.rand(batch, 1, h, w, generator=g) * 5 + 0.5,
        "normals": normals,
        "edge": (torch.rand(batch, h, w, generator=g) > 0.8).float(),
    }


@pytest.fixture(scope="module")
def model():
    return tiny_tiger()


def test_outputs_and_routing_weights(model):
    images = torch.rand(2, 3, *SIZE)
    output = model(images)
    assert {k: tuple(v.shape) for k, v in output.predictions.items()} == {
        "semseg": (2, 5, *SIZE),
        "depth": (2, 1, *SIZE),
        "normals": (2, 3, *SIZE),
        "edge": (2, 1, *SIZE),
    }
    assert output.alpha.shape == (2, 4, 3, 12)
    torch.testing.assert_close(output.alpha.sum(2), torch.ones(2, 4, 12))
    assert model.expert_names == ["clip_tiny", "dinov2_tiny", "sam_tiny"]


def test_trainable_parameters_exclude_every_expert_weight(model):
    expert_params = {id(p) for p in model.experts.parameters()}
    assert expert_params, "the experts have weights"
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and not any(id(p) in expert_params for p in trainable)
    stored = checkpoint.trainable_state({f"net.{key}": value for key, value in model.state_dict().items()})
    assert stored and not any(key.startswith("net.experts.") for key in stored)
    model.train()
    assert all(not expert.training for expert in model.experts)


def delta_of(model, output, batch, removal="subtract"):
    """Delta (B, T, M, N) and valid (B, T, N) of every task, from the model's counterfactual forward."""
    full = {
        task.name: pixel_loss(task, output.predictions[task.name], batch[task.name]) for task in model.tasks
    }
    counterfactual = model.counterfactual(output, removal)
    return counterfactual_delta(model.tasks, counterfactual, batch, full, output.grid)


def test_counterfactual_gradient_reaches_the_router_and_never_the_experts(model):
    model.zero_grad()
    output = model(torch.rand(2, 3, *SIZE))
    loss = TigerLoss(model.tasks, lambda_cf=1.0)(output, targets(), model.counterfactual(output))["cf"]
    assert loss.item() > 0
    loss.backward()
    assert model.hyper.w0.grad is not None and model.hyper.w0.grad.abs().sum() > 0
    assert model.query_encoder.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.experts.parameters())
    # L_cf is a function of alpha only: nothing downstream of routing gets a gradient from it
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.heads.parameters())


def test_counterfactual_loss_is_zero_when_alpha_equals_p(model):
    with torch.no_grad():
        output = model(torch.rand(2, 3, *SIZE))
        delta, valid = delta_of(model, output, targets())
        p = causal_importance(delta, tau=0.5)
    assert counterfactual_loss(delta, valid, p, tau=0.5).item() == pytest.approx(0.0, abs=1e-6)
    assert counterfactual_loss(delta, valid, output.alpha, tau=0.5).item() > 1e-3
    assert valid[:, 0, 0].logical_not().all()  # no semseg label in the first token row


def test_expert_whose_removal_hurts_most_gets_most_mass(model):
    # silence expert 1 (its projected tokens are zero) and fit the depth target to the full prediction:
    # removing expert 1 changes nothing, removing the others can only increase the depth loss.
    tiny = tiny_tiger()
    torch.nn.init.zeros_(tiny.projections[1].norm.weight)
    torch.nn.init.zeros_(tiny.projections[1].norm.bias)
    tiny.expert_interaction = None
    torch.nn.init.constant_(tiny.heads.heads["depth"][-1].bias, 10.0)  # positive depth everywhere
    with torch.no_grad():
        output = tiny(torch.rand(1, 3, *SIZE))
    batch = targets(1)
    batch["depth"] = output.predictions["depth"].clone()
    assert (batch["depth"] > 0).all()
    delta = delta_of(tiny, output, batch)[0][:, 1]  # the depth task
    assert delta[:, 1].abs().max() < 1e-5  # float noise of the batched pass only
    assert (delta[:, [0, 2]] > -1e-5).all() and delta[:, [0, 2]].sum() > 0.1
    p = causal_importance(delta, tau=1.0, dim=1)
    decisive = delta.max(1).values > delta.min(1).values + 1e-3  # tokens where the experts' effects differ
    torch.testing.assert_close(p.argmax(1)[decisive], delta.argmax(1)[decisive])
    assert decisive.any() and (p[:, 1] <= p.max(1).values).all()


@pytest.mark.parametrize("removal", ["subtract", "renormalize", "mean"])
def test_counterfactual_batched_pass_equals_one_pass_per_expert(model, removal):
    batch = targets()
    with torch.no_grad():
        output = model(torch.rand(2, 3, *SIZE))
        delta, _ = delta_of(model, output, batch, removal)
        counterfactual = model.counterfactual(output, removal)
        task = model.tasks[1]
        full, _ = pixel_loss(task, output.predictions["depth"], batch["depth"])
        for k in range(3):
            tokens = output.tokens[:, k]  # (B, N, d)
            weight_k = output.alpha[:, :, k, :, None]  # (B, T, N, 1)
            if removal == "mean":  # expert k's tokens replaced by their mean over the batch's tokens
                removed = output.fused - weight_k * tokens[:, None] + weight_k * tokens.mean((0, 1))
            else:
                removed = output.fused - weight_k * tokens[:, None]
            if removal == "renormalize":
                removed = removed / (1 - weight_k)
            logits = model.decode(removed, output.grid, SIZE)
            torch.testing.assert_close(counterfactual["depth"][:, k], logits["depth"], atol=1e-5, rtol=1e-4)
            loss, weight = pixel_loss(task, logits["depth"], batch["depth"])
            pooled, _ = pool_to_grid((loss - full) * weight, weight, output.grid)
            torch.testing.assert_close(delta[:, 1, k], pooled.flatten(1), atol=1e-5, rtol=1e-4)


def test_removing_an_expert_that_routes_nothing_changes_nothing(model):
    with torch.no_grad():
        output = model(torch.rand(2, 3, *SIZE))
    output.alpha = torch.zeros_like(output.alpha)
    output.alpha[:, :, 0] = 1.0  # all weight on expert 0
    output.fused = output.tokens[:, None, 0].expand_as(output.fused)
    for removal in ("subtract", "renormalize", "mean"):
        removed = remove_expert(output, removal)
        for k in (1, 2):
            torch.testing.assert_close(removed[:, :, k], output.fused)
    # subtracting the only routed expert leaves nothing; mean ablation leaves its mean token
    torch.testing.assert_close(remove_expert(output, "subtract")[:, :, 0], torch.zeros_like(output.fused))
    mean_token = output.tokens[:, 0].mean((0, 1)).expand_as(output.fused)
    torch.testing.assert_close(remove_expert(output, "mean")[:, :, 0], mean_token)
    with pytest.raises(ValueError, match="removal must be one of"):
        remove_expert(output, "drop")


def test_total_loss_is_eq_14(model):
    weights = {"semseg": 1.0, "depth": 2.0, "normals": 10.0, "edge": 50.0}
    tasks = [replace(task, weight=weights[task.name]) for task in model.tasks]
    criterion = TigerLoss(tasks, lambda_cf=0.5)
    output = model(torch.rand(2, 3, *SIZE))
    counterfactual = model.counterfactual(output)
    terms = criterion(output, targets(), counterfactual)
    expected = sum(weights[name] * terms[name] for name in weights) + 0.5 * terms["cf"]
    torch.testing.assert_close(terms["loss"], expected)
    # L_cf from scratch: eq. 8-13 on the same counterfactual predictions
    delta, valid = delta_of(model, output, targets())
    torch.testing.assert_close(terms["cf"], counterfactual_loss(delta, valid, output.alpha))
    assert "cf" not in TigerLoss(tasks, lambda_cf=0.0)(output, targets())
    with pytest.raises(ValueError, match="pass the counterfactual predictions"):
        criterion(output, targets())
    with pytest.raises(ValueError, match="the model's tasks"):
        TigerLoss(tasks[:2], lambda_cf=0.5)(output, targets(), counterfactual)


def test_ablation_switches(model):
    plain = tiny_tiger(expert_interaction=False, task_interaction=False)
    assert plain.expert_interaction is None and plain.task_interaction is None
    assert plain(torch.rand(1, 3, *SIZE)).alpha.shape == (1, 4, 3, 12)
    assert not plain.task_representation.uses_instructions
    deep = tiny_tiger(expert_interaction_layers=2, task_interaction_layers=1)
    assert len(deep.expert_interaction.layers.layers) == 2 and len(deep.task_interaction.layers.layers) == 1


def test_bad_input_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"RGB images of shape \(B, 3, H, W\)"):
        model(torch.rand(2, 1, *SIZE))
    with pytest.raises(ValueError, match=r"RGB images"):
        model(torch.rand(3, *SIZE))
    with pytest.raises(ValueError, match="unknown task"):
        build_tiger(EXPERTS, ["depth", "flow"], grid=(2, 2), instructions={"encoder": None})
    with pytest.raises(ValueError, match="clip_tiny"):
        build_tiger({"x": {"name": "no_such_expert"}}, ["depth"], grid=(2, 2), instructions={"encoder": None})


@pytest.mark.parametrize(
    "grid, shown",
    [([4.5, 5], r"\[4.5, 5\] \(4.5 is not"), ([0, 5], r"\(0 is not"), ([-1, 5], r"\(-1 is not"),
     (["4", 5], r"\('4' is not"), ([4], r"\[4\]$")],
)  # fmt: skip
def test_grid_is_never_truncated(grid, shown):
    with pytest.raises(OptionError, match=r"^grid must be 2 integers \(H, W\) >= 1, got .*" + shown):
        tiny_tiger(grid=grid)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"dim": 0}, r"^dim must be >= 1, got 0$"),
        ({"dim": 32.0}, r"^dim must be an integer, got 32.0 \(float\)$"),
        ({"num_heads": 5}, r"^num_heads must divide dim=32, got 5$"),
        ({"rank": -2}, r"^rank must be >= 1, got -2$"),
        ({"hyper_hidden": 1.5}, r"^hyper_hidden must be an integer"),
        ({"query_width": 24}, r"^query_width must be a multiple of 16, got 24$"),
        ({"decoder_width": 100}, r"^decoder_width must halve .* got 100: .* \[100, 50, 25\] and 50 is not"),
        ({"decoder_upsamples": -1}, r"^decoder_upsamples must be >= 0, got -1$"),
        ({"expert_interaction_layers": 0}, r"^expert_interaction_layers must be >= 1, got 0$"),
        ({"projection_hidden": 0}, r"^projection_hidden must be >= 1, got 0$"),
        ({"task_interaction": "yes"}, r"^task_interaction must be true or false, got 'yes'"),
    ],
)
def test_model_sizes_are_checked_before_anything_is_built(setting, message, monkeypatch):
    import tiger.experts

    def no_experts(**spec):
        raise AssertionError("experts were built before the options were checked")

    monkeypatch.setattr(tiger.experts, "build_expert", no_experts)
    with pytest.raises(OptionError, match=message):
        tiny_tiger(**setting)


def test_sizes_of_switched_off_parts_and_task_weights(model):
    plain = tiny_tiger(
        num_heads=5, expert_interaction=False, task_interaction=False, task_interaction_layers=0
    )
    assert plain.expert_interaction is None and plain.task_interaction is None
    for weight, message in ((-1.0, "must be >= 0, got -1.0"), (float("inf"), "must be a finite number")):
        with pytest.raises(OptionError, match=f"^task_weights.depth {message}"):
            tiny_tiger(task_weights={"depth": weight})
    with pytest.raises(OptionError, match=r"^experts.sam.pos_embed_antialias must be true or false"):
        build_tiger(
            {"sam": {"name": "sam_tiny", "pos_embed_antialias": "no"}}, ["depth"], grid=(2, 2),
            instructions={"encoder": None},
        )  # fmt: skip
