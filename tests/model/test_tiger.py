"""TIGER assembled with tiny real experts: frozen parts, routing outputs, the counterfactual forward and the
removal of sets of experts."""

import pytest
import torch

from tiger.model import checkpoint
from tiger.model.build import build_tiger
from tiger.model.tiger import remove_experts
from tiger.options import OptionError

TASKS = ("semseg", "depth", "normals", "edge")
EXPERTS = ("clip_tiny", "dinov2_tiny", "sam_tiny")
SIZE = (40, 48)


@pytest.fixture(scope="module")
def tiny_tiger(tiny_config):
    def build(grid=(3, 4), **options):
        torch.manual_seed(0)
        return build_tiger(tiny_config(EXPERTS, TASKS, grid, **options))

    return build


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
def model(tiny_tiger):
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


@pytest.mark.parametrize("removal", ["subtract", "renormalize", "mean"])
def test_counterfactual_batched_pass_equals_one_pass_per_expert(model, removal):
    with torch.no_grad():
        output = model(torch.rand(2, 3, *SIZE))
        counterfactual = model.counterfactual(output, removal)
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
            for task in TASKS:
                torch.testing.assert_close(counterfactual[task][:, k], logits[task], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("removal", ["subtract", "renormalize", "mean"])
def test_removing_a_set_of_experts_removes_each_of_their_contributions(model, removal):
    with torch.no_grad():
        output = model(torch.rand(2, 3, *SIZE))
    removed = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    variants = remove_experts(output, removed, removal)
    tokens = output.tokens - output.tokens.mean((0, 2), keepdim=True) if removal == "mean" else output.tokens
    gone = output.alpha[:, :, [0, 2]]  # (B, T, 2, N)
    expected = output.fused - (gone[..., None] * tokens[:, None, [0, 2]]).sum(2)
    if removal == "renormalize":
        expected = expected / (1 - gone.sum(2))[..., None]
    torch.testing.assert_close(variants[:, :, 0], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(variants[:, :, 1], output.fused)  # nothing removed
    single = remove_experts(output, torch.eye(3), removal)[:, :, 1]
    assert torch.equal(variants[:, :, 2], single)  # a set of one is eq. 8's f^(-k), bit for bit


def test_removing_every_expert_routes_nothing_or_the_mean_tokens(model):
    with torch.no_grad():
        output = model(torch.rand(2, 3, *SIZE))
    everything = torch.ones(1, 3)
    output.fused = output.fused + 1e-7  # the round-off a fused sum can carry, which removing all leaves
    for removal in ("subtract", "renormalize"):  # renormalize must not divide float noise by eps
        assert torch.equal(
            remove_experts(output, everything, removal)[:, :, 0], torch.zeros_like(output.fused)
        )
    mean_tokens = (output.alpha[..., None] * output.tokens.mean((0, 2), keepdim=True)[:, None]).sum(2)
    torch.testing.assert_close(remove_experts(output, everything, "mean")[:, :, 0], mean_tokens)


def test_removing_an_expert_that_routes_nothing_changes_nothing(model):
    with torch.no_grad():
        output = model(torch.rand(2, 3, *SIZE))
    output.alpha = torch.zeros_like(output.alpha)
    output.alpha[:, :, 0] = 1.0  # all weight on expert 0
    output.fused = output.tokens[:, None, 0].expand_as(output.fused)
    for removal in ("subtract", "renormalize", "mean"):
        removed = remove_experts(output, torch.eye(3), removal)
        for k in (1, 2):
            torch.testing.assert_close(removed[:, :, k], output.fused)
    # subtracting the only routed expert leaves nothing; mean ablation leaves its mean token
    subtracted = remove_experts(output, torch.eye(3), "subtract")[:, :, 0]
    torch.testing.assert_close(subtracted, torch.zeros_like(output.fused))
    mean_token = output.tokens[:, 0].mean((0, 1)).expand_as(output.fused)
    torch.testing.assert_close(remove_experts(output, torch.eye(3), "mean")[:, :, 0], mean_token)
    with pytest.raises(ValueError, match="removal must be one of"):
        remove_experts(output, torch.eye(3), "drop")
    with pytest.raises(ValueError, match=r"removed must be \(V, M=3\)"):
        remove_experts(output, torch.eye(2), "subtract")


def test_take_keeps_the_first_images(model):
    with torch.no_grad():
        output = model(torch.rand(3, 3, *SIZE))
    first = output.take(2)
    assert first.alpha.shape[0] == 2 and first.grid == output.grid
    assert torch.equal(first.predictions["depth"], output.predictions["depth"][:2])


def test_ablation_switches(tiny_tiger):
    plain = tiny_tiger(expert_interaction=False, task_interaction=False)
    assert plain.expert_interaction is None and plain.task_interaction is None
    assert plain(torch.rand(1, 3, *SIZE)).alpha.shape == (1, 4, 3, 12)
    assert not plain.task_representation.uses_instructions
    deep = tiny_tiger(expert_interaction_layers=2, task_interaction_layers=1)
    assert len(deep.expert_interaction.layers.layers) == 2 and len(deep.task_interaction.layers.layers) == 1


def test_bad_input_is_a_clear_error(model, tiny_config):
    with pytest.raises(ValueError, match=r"RGB images of shape \(B, 3, H, W\)"):
        model(torch.rand(2, 1, *SIZE))
    with pytest.raises(ValueError, match=r"RGB images"):
        model(torch.rand(3, *SIZE))
    with pytest.raises(ValueError, match="unknown expert 'no_such_expert'.*clip_tiny"):
        build_tiger(tiny_config(experts={"x": {"name": "no_such_expert"}}))
    with pytest.raises(OptionError, match=r"^experts.sam.pos_embed_antialias must be true or false"):
        build_tiger(tiny_config(experts={"sam": {"name": "sam_tiny", "pos_embed_antialias": "no"}}))
