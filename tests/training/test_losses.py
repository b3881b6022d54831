"""The objective's terms: task losses, the JSD, the importance targets (numbers, not only shapes), L_cf and
its gradient path, and the options."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tiger.model.build import build_tiger
from tiger.options import OptionError
from tiger.tasks import make_task
from tiger.training.losses import (
    Effects,
    LossConfig,
    TigerLoss,
    causal_importance,
    counterfactual_effects,
    counterfactual_loss,
    importance_target,
    jensen_shannon,
    pool_to_grid,
    task_loss,
)


def test_jensen_shannon_matches_an_independent_computation():
    torch.manual_seed(0)
    p = torch.rand(5, 4, dtype=torch.float64).softmax(-1)
    q = torch.rand(5, 4, dtype=torch.float64).softmax(-1)
    m = (p + q) / 2
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    torch.testing.assert_close(jensen_shannon(p, q, dim=-1), 0.5 * kl(p, m) + 0.5 * kl(q, m))
    # with scipy's distance (the square root of the JSD in nats)
    scipy_distance = pytest.importorskip("scipy.spatial.distance")
    for row in range(5):
        expected = scipy_distance.jensenshannon(p[row].numpy(), q[row].numpy()) ** 2
        assert jensen_shannon(p[row], q[row], dim=0).item() == pytest.approx(expected, rel=1e-9)


def test_jensen_shannon_handles_zero_mass_and_is_bounded():
    p = torch.tensor([1.0, 0.0])
    q = torch.tensor([0.0, 1.0])
    assert jensen_shannon(p, q, dim=0).item() == pytest.approx(math.log(2))
    assert jensen_shannon(p, p, dim=0).item() == 0.0


def test_causal_importance_standardises_then_softmaxes():
    delta = torch.tensor([[1.0, 2.0, 6.0]])
    z = (delta - 3.0) / (torch.tensor([1.0, 2.0, 6.0]).std(unbiased=False) + 1e-6)
    expected = (z / 0.5).softmax(-1)
    torch.testing.assert_close(causal_importance(delta, tau=0.5, dim=1), expected)
    # invariant to the scale and offset of the losses
    torch.testing.assert_close(causal_importance(10 * delta + 3, tau=0.5, dim=1), expected, atol=1e-5, rtol=0)
    # the expert whose removal hurts most gets the most mass
    assert causal_importance(delta, tau=1.0, dim=1).argmax().item() == 2


def test_pool_to_grid_averages_over_valid_pixels_only():
    values = torch.tensor([[[1.0, 3.0, 10.0, 10.0], [5.0, 7.0, 10.0, 10.0]]])  # (1, 2, 4)
    weight = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])
    pooled, valid = pool_to_grid(values, weight, (1, 2))
    torch.testing.assert_close(pooled, torch.tensor([[[3.0, 0.0]]]))  # (1 + 3 + 5) / 3; no valid pixel
    assert valid.tolist() == [[[True, False]]]


def test_semseg_loss_ignores_255_and_means_over_valid_pixels():
    task = make_task("semseg", num_classes=3)
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 0, 0, 0] = 2.0
    target = torch.tensor([[[0, 255, 2]]])
    expected = (F.cross_entropy(logits[0, :, 0, 0][None], torch.tensor([0])) + math.log(3)) / 2
    assert task_loss(task, logits, target).item() == pytest.approx(expected.item())


def test_saliency_uses_batch_class_weights():
    task = make_task("sal")
    logits = torch.randn(1, 2, 2, 2)
    target = torch.tensor([[[1, 0], [0, 255]]])  # 1 positive, 2 negatives -> w = 2/3
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1 / 3, 2 / 3]), ignore_index=255)
    assert task_loss(task, logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_edge_balanced_bce_by_hand():
    task = make_task("edge")
    logits = torch.tensor([[[[0.0, 2.0, -1.0]]]])
    target = torch.tensor([[[1.0, 0.0, 255.0]]])
    s = torch.sigmoid(torch.tensor([0.0, 2.0]))
    expected = (-(0.95 * torch.log(s[0])) - 0.05 * torch.log(1 - s[1])) / 2
    assert task_loss(task, logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_normals_l1_after_normalisation_and_depth_l1_skip_invalid():
    normals = make_task("normals")
    logits = torch.stack([torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([5.0, 1.0])])[
        None, :, None
    ]
    target = torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0])])[
        None, :, None
    ]
    # pixel 0: |(0,0,1) - (1,0,0)| summed = 2; pixel 1 invalid (zero target)
    assert task_loss(normals, logits, target).item() == pytest.approx(2.0)
    depth = make_task("depth")
    loss, weight = depth.pixel_loss(torch.tensor([[[[1.0, 3.0]]]]), torch.tensor([[[[2.0, 0.0]]]]))
    assert loss.tolist() == [[[1.0, 0.0]]] and weight.tolist() == [[[1.0, 0.0]]]


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"lambda_cf": -0.1}, r"^lambda_cf must be >= 0, got -0.1$"),  # once silently switched L_cf off
        ({"tau": 0}, r"^tau must be > 0, got 0$"),  # once NaN from step 0
        ({"tau": -1.0}, r"^tau must be > 0, got -1.0$"),  # once silently inverted the target
        ({"eps": 0.0}, r"^eps must be > 0, got 0.0$"),
        ({"tau": float("nan")}, r"^tau must be a finite number, got nan$"),
        ({"lambda_cf": "0.1"}, r"^lambda_cf must be a number, got '0.1' \(str\)$"),
        ({"removal": "drop"}, r"^removal must be one of 'subtract', 'renormalize', 'mean', got 'drop'$"),
        ({"target": "softmax"}, r"^target must be one of 'zscore', 'positive', 'sparsemax', got 'softmax'$"),
        ({"min_effect": -0.5}, r"^min_effect must be >= 0, got -0.5$"),
    ],
)
def test_loss_settings_are_checked_where_they_enter(setting, message):
    with pytest.raises(OptionError, match=message):
        LossConfig(**setting)
    assert LossConfig(lambda_cf=0, tau=0.5).lambda_cf == 0  # 0 = L_cf off, allowed


def test_jensen_shannon_gradient_is_finite_when_alpha_saturates():
    logits = torch.tensor([0.0, 200.0, -200.0], requires_grad=True)  # softmax gives exact zeros
    q = logits.softmax(0)
    assert (q == 0).any()
    jensen_shannon(torch.tensor([0.2, 0.5, 0.3]), q, dim=0).backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- importance targets


def paper_importance(delta: torch.Tensor, tau: float, eps: float = 1e-6, dim: int = 2) -> torch.Tensor:
    """Eq. 9-10 as the code computed them before the targets became an option (transcribed)."""
    mean = delta.mean(dim, keepdim=True)
    std = delta.std(dim, keepdim=True, unbiased=False)
    standardised = (delta - mean) / (std + eps)
    return (standardised / tau).softmax(dim)


def effects(delta, loss=None, valid=None) -> Effects:
    """Effects of (B, T, M, N) deltas with a per-token loss of 1 (or ``loss``) and every token valid."""
    delta = torch.as_tensor(delta, dtype=torch.float64)
    batch, tasks, _, tokens = delta.shape
    loss = torch.ones(batch, tasks, tokens, dtype=torch.float64) if loss is None else loss
    valid = torch.ones(batch, tasks, tokens, dtype=torch.bool) if valid is None else valid
    return Effects(delta, loss, valid)


def test_zscore_target_reproduces_the_paper_bit_for_bit():
    torch.manual_seed(0)
    delta = torch.randn(2, 3, 5, 7) * torch.rand(2, 3, 1, 7)
    for tau in (0.5, 1.0, 2.0):
        p, has_target = importance_target(effects(delta.float()), "zscore", tau)
        assert torch.equal(p, paper_importance(delta.double(), tau).to(p.dtype)) or torch.equal(
            p, paper_importance(delta.float().double(), tau)
        )
        assert torch.equal(causal_importance(delta, tau), paper_importance(delta, tau))
        assert has_target.all()


def test_zscore_gives_a_useless_expert_at_least_samuelsons_floor():
    # one expert matters, four do nothing: a z-score over 5 items is at most 2 = sqrt(M - 1)
    for size in (1.0, 1e3, 1e6):  # (eq. 9's eps shifts it by std / (std + eps) for tiny effects)
        p, _ = importance_target(effects([[[[size], [0.0], [0.0], [0.0], [0.0]]]]), "zscore", 1.0)
        floor = math.exp(-0.5) / (math.exp(2) + 4 * math.exp(-0.5))  # z = (2, -1/2, -1/2, -1/2, -1/2)
        assert p[0, 0, 1:, 0].tolist() == pytest.approx([floor] * 4, rel=1e-4)
        assert p[0, 0, 1, 0] > 0.06


def test_positive_target_gives_a_useless_expert_exactly_zero():
    delta = [[[[2.0, 0.5], [0.0, 0.5], [-1.0, 0.0], [6.0, 0.0]]]]  # (1, 1, 4, 2)
    p, has_target = importance_target(effects(delta), "positive", min_effect=0.01)
    assert p[0, 0, :, 0].tolist() == [0.25, 0.0, 0.0, 0.75]  # [Delta]+ / sum [Delta]+
    assert p[0, 0, :, 1].tolist() == [0.5, 0.5, 0.0, 0.0]
    assert has_target.all()
    torch.testing.assert_close(p.sum(2), torch.ones(1, 1, 2, dtype=torch.float64))


def test_positive_and_sparsemax_do_not_change_when_a_task_loss_is_rescaled():
    torch.manual_seed(1)
    delta = torch.randn(2, 2, 4, 6, dtype=torch.float64)
    loss = torch.rand(2, 2, 6, dtype=torch.float64) + 0.5
    for target in ("positive", "sparsemax"):
        p, kept = importance_target(effects(delta, loss), target, tau=0.5, min_effect=0.01)
        scaled, kept_scaled = importance_target(
            effects(7.3 * delta, 7.3 * loss), target, tau=0.5, min_effect=0.01
        )
        torch.testing.assert_close(scaled, p, rtol=1e-12, atol=1e-12)
        assert torch.equal(kept, kept_scaled)
        torch.testing.assert_close(p.sum(2)[kept], torch.ones_like(p.sum(2)[kept]))


def test_tokens_without_evidence_carry_no_target():
    delta = torch.tensor([[[[0.004, -1.0, 2.0], [0.0, -1.0, 1.0], [0.0, -1.0, 0.0]]]], dtype=torch.float64)
    loss = torch.tensor([[[1.0, 1.0, 1.0]]], dtype=torch.float64)  # effects of 0.4%, none, 300%
    valid = torch.tensor([[[True, True, False]]])
    for target in ("positive", "sparsemax"):
        _, has_target = importance_target(effects(delta, loss, valid), target, min_effect=0.01)
        assert has_target.tolist() == [[[False, False, False]]]  # too small; no positive effect; not valid
        _, has_target = importance_target(effects(delta, loss, valid), target, min_effect=0.0)
        assert has_target.tolist() == [[[True, False, False]]]


def test_sparsemax_target_has_exact_zeros_in_units_of_the_token_loss():
    delta = torch.tensor([[[[2.0], [0.0], [0.0], [-1.0]]]], dtype=torch.float64)
    p, _ = importance_target(effects(delta), "sparsemax", tau=1.0)
    assert p[0, 0, :, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    # a softer temperature: sparsemax([0.5, 0, 0, -0.25]) = [0.75, 0.25, 0, 0] ... by hand: threshold 0.
    p, _ = importance_target(effects(delta), "sparsemax", tau=4.0)
    expected = torch.tensor([0.5, 0.0, 0.0, -0.25], dtype=torch.float64)
    tau_star = (expected[:3].sum() - 1) / 3  # support of size 3: z_(3) = 0 > tau* = -1/6
    torch.testing.assert_close(p[0, 0, :, 0], (expected - tau_star).clamp_min(0))
    assert p[0, 0, 3, 0] == 0.0


def test_counterfactual_loss_is_the_mean_jsd_over_the_tokens_with_a_target():
    p = torch.tensor([[[[1.0, 0.5], [0.0, 0.5]]]])  # (1, 1, 2, 2)
    alpha = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]], requires_grad=True)
    kept = torch.tensor([[[True, False]]])
    loss = counterfactual_loss(p, kept, alpha)
    assert loss.item() == pytest.approx(
        jensen_shannon(p[0, 0, :, 0], alpha[0, 0, :, 0].detach(), dim=0).item()
    )
    loss.backward()
    assert alpha.grad[..., 1].abs().sum() == 0  # a token without a target gets no pull


# ---------------------------------------------------------------- L_cf on a model


SIZE = (40, 48)


@pytest.fixture(scope="module")
def model(tiny_config):
    torch.manual_seed(0)
    return build_tiger(
        tiny_config(("clip_tiny", "dinov2_tiny", "sam_tiny"), ("semseg", "depth", "normals", "edge"), (3, 4))
    )


def targets(batch=2):
    g = torch.Generator().manual_seed(1)
    h, w = SIZE
    semseg = torch.randint(0, 5, (batch, h, w), generator=g)
    semseg[:, :14] = 255  # the first token row (adaptive pooling cell: pixel rows 0-13)
    return {
        "semseg": semseg,
        "depth": torch.rand(batch, 1, h, w, generator=g) * 5 + 0.5,
        "normals": F.normalize(torch.randn(batch, 3, h, w, generator=g), dim=1),
        "edge": (torch.rand(batch, h, w, generator=g) > 0.8).float(),
    }


def effects_of(model, output, batch, removal="subtract") -> Effects:
    full = {
        task.name: task.pixel_loss(output.predictions[task.name], batch[task.name]) for task in model.tasks
    }
    return counterfactual_effects(
        model.tasks, model.counterfactual(output, removal), batch, full, output.grid
    )


@pytest.mark.parametrize("target", ["zscore", "positive", "sparsemax"])
def test_counterfactual_gradient_reaches_the_router_and_never_the_experts(model, target):
    model.zero_grad()
    output = model(torch.rand(2, 3, *SIZE))
    criterion = TigerLoss(model.tasks, LossConfig(lambda_cf=1.0, target=target, min_effect=0.0))
    loss = criterion(output, targets(), model.counterfactual(output))["cf"]
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
        found = effects_of(model, output, targets())
        p, has_target = importance_target(found, "zscore", tau=0.5)
    assert counterfactual_loss(p, has_target, p).item() == pytest.approx(0.0, abs=1e-6)
    assert counterfactual_loss(p, has_target, output.alpha).item() > 1e-3
    assert found.valid[:, 0, 0].logical_not().all()  # no semseg label in the first token row


def test_effects_are_the_pooled_loss_increase_of_each_removal(model):
    batch = targets()
    with torch.no_grad():
        output = model(torch.rand(2, 3, *SIZE))
        found = effects_of(model, output, batch)
        task = model.tasks[1]
        full, weight = task.pixel_loss(output.predictions["depth"], batch["depth"])
        counterfactual = model.counterfactual(output)
        for k in range(3):
            loss, _ = task.pixel_loss(counterfactual["depth"][:, k], batch["depth"])
            pooled, _ = pool_to_grid((loss - full) * weight, weight, output.grid)
            torch.testing.assert_close(found.delta[:, 1, k], pooled.flatten(1), atol=1e-5, rtol=1e-4)
        pooled_full, _ = pool_to_grid(full * weight, weight, output.grid)
        torch.testing.assert_close(found.loss[:, 1], pooled_full.flatten(1))


def test_expert_whose_removal_hurts_most_gets_most_mass(tiny_config):
    # silence expert 1 (its projected tokens are zero) and fit the depth target to the full prediction:
    # removing expert 1 changes nothing, removing the others can only increase the depth loss.
    torch.manual_seed(0)
    tiny = build_tiger(
        tiny_config(("clip_tiny", "dinov2_tiny", "sam_tiny"), ("semseg", "depth", "normals", "edge"), (3, 4))
    )
    torch.nn.init.zeros_(tiny.projections[1].norm.weight)
    torch.nn.init.zeros_(tiny.projections[1].norm.bias)
    tiny.expert_interaction = None
    torch.nn.init.constant_(tiny.heads.heads["depth"][-1].bias, 10.0)  # positive depth everywhere
    with torch.no_grad():
        output = tiny(torch.rand(1, 3, *SIZE))
    batch = targets(1)
    batch["depth"] = output.predictions["depth"].clone()
    delta = effects_of(tiny, output, batch).delta[:, 1]  # the depth task
    assert delta[:, 1].abs().max() < 1e-5  # float noise of the batched pass only
    assert (delta[:, [0, 2]] > -1e-5).all() and delta[:, [0, 2]].sum() > 0.1
    p = causal_importance(delta, tau=1.0, dim=1)
    decisive = delta.max(1).values > delta.min(1).values + 1e-3  # tokens where the experts' effects differ
    torch.testing.assert_close(p.argmax(1)[decisive], delta.argmax(1)[decisive])
    assert decisive.any() and (p[:, 1] <= p.max(1).values).all()


def test_terms_are_the_task_losses_and_l_cf_from_scratch(model):
    weights = {"semseg": 1.0, "depth": 2.0, "normals": 10.0, "edge": 50.0}
    tasks = [replace(task, weight=weights[task.name]) for task in model.tasks]
    criterion = TigerLoss(tasks, LossConfig(lambda_cf=0.5))
    output = model(torch.rand(2, 3, *SIZE))
    counterfactual = model.counterfactual(output)
    terms = criterion(output, targets(), counterfactual)
    assert set(terms) == {*weights, "cf"}  # the terms only: the balancer forms eq. 14's total
    for task in tasks:
        torch.testing.assert_close(
            terms[task.name], task_loss(task, output.predictions[task.name], targets()[task.name])
        )
    found = effects_of(model, output, targets())
    p, has_target = importance_target(found, "zscore", 1.0)
    torch.testing.assert_close(terms["cf"], counterfactual_loss(p, has_target, output.alpha))
    assert "cf" not in criterion(output, targets())
    with pytest.raises(ValueError, match="the model's tasks"):
        TigerLoss(tasks[:2], LossConfig())(output, targets(), counterfactual)
