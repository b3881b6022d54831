"""Task balancers: each paper's update against a hand computation or a toy problem with a known answer,
the fixed weights against today's eq. 14, checkpoint round trips, bf16, DDP agreement and the configs."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tiger.options import OptionError
from tiger.tasks import make_task
from tiger.training.balancing import FAMO, FixedWeights, GradNorm, UncertaintyWeighting, mean_over_processes

# Lightning and Hydra are imported inside the tests that use them: the DDP test's spawned processes
# import this module and need only torch and tiger.training.balancing.

CONF = Path(__file__).resolve().parents[2] / "conf"
FAST = [
    "model.net.instructions.encoder=null",
    "data.datamodule.synthetic.num_train=8",
    "data.datamodule.synthetic.num_val=2",
    "data.datamodule.batch_size=2",
]


def tasks(*names: str):
    return [make_task(name, num_classes=5) if name == "semseg" else make_task(name) for name in names]


def compose_config(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[*FAST, *overrides])


def as_losses(balancer, values, requires_grad=False):
    return {
        name: torch.tensor(float(v), requires_grad=requires_grad)
        for name, v in zip(balancer.task_names, values, strict=True)
    }


# ---------------------------------------------------------------- fixed: today's eq. 14, exactly


def test_the_balancer_forms_eq_14_from_the_terms():
    from hydra.utils import instantiate

    config = compose_config("model.loss.lambda_cf=0.5", "data.tasks=[semseg,depth,normals,edge]")
    torch.manual_seed(0)
    module = instantiate(config.model, _convert_="all")
    assert isinstance(module.balancer, FixedWeights) and module.balancer.lambda_cf == 0.5
    datamodule = instantiate(config.data.datamodule, _convert_="all")
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    output = module.net(batch["image"])
    counterfactual = module.net.counterfactual(output, module.loss_config.removal, module.loss_config.eps)
    terms = module.criterion(output, module._targets(batch), counterfactual)
    assert set(terms) == {"semseg", "depth", "normals", "edge", "cf"}  # terms only, never a total
    by_hand = (
        terms["semseg"] + terms["depth"] + 10 * terms["normals"] + 50 * terms["edge"] + 0.5 * terms["cf"]
    )
    torch.testing.assert_close(module.balancer(terms, output.fused), by_hand)
    assert module.balancer.weights_by_task() == {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}
    # every balancer adds lambda_cf L_cf to its weighted task losses, whatever its weights
    for kind in (FAMO, GradNorm, UncertaintyWeighting):
        balancer = kind(module.net.tasks, lambda_cf=0.5)
        task_part = balancer({name: terms[name] for name in balancer.task_names}, output.fused)
        total = kind(module.net.tasks, lambda_cf=0.5)(terms, output.fused)
        torch.testing.assert_close(total, task_part + 0.5 * terms["cf"])
    with pytest.raises(KeyError, match=r"but got terms \['flow'\]"):
        module.balancer({**terms, "flow": terms["cf"]})


# ---------------------------------------------------------------- FAMO


def softmax(xs):
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    return [e / sum(exps) for e in exps]


def famo_by_hand(logits, adam, before, after, lr=0.025, gamma=0.001, eps=1e-8, betas=(0.9, 0.999)):
    """The paper's update written out: weights of the step, then one Adam step of the logits."""
    k = len(logits)
    z = softmax(logits)
    c = 1.0 / sum(z[i] / (before[i] + eps) for i in range(k))
    weights = [k * c * z[i] / (before[i] + eps) for i in range(k)]
    delta = [math.log(before[i] + eps) - math.log(after[i] + eps) for i in range(k)]
    jacobian = [[(z[i] if i == j else 0.0) - z[i] * z[j] for j in range(k)] for i in range(k)]  # dz_i/dxi_j
    grad = [sum(jacobian[i][j] * delta[i] for i in range(k)) + gamma * logits[j] for j in range(k)]
    step = adam["step"] + 1
    m = [betas[0] * adam["m"][j] + (1 - betas[0]) * grad[j] for j in range(k)]
    v = [betas[1] * adam["v"][j] + (1 - betas[1]) * grad[j] ** 2 for j in range(k)]
    new = [
        logits[j] - lr * (m[j] / (1 - betas[0] ** step)) / (math.sqrt(v[j] / (1 - betas[1] ** step)) + 1e-8)
        for j in range(k)
    ]
    return weights, new, {"step": step, "m": m, "v": v}


def test_famo_steps_equal_a_hand_computation_of_the_paper_update():
    famo = FAMO(tasks("semseg", "depth", "edge"))
    start = [0.3, -0.2, 0.05]  # nonzero logits: the weight decay term counts
    famo.logits.data = torch.tensor(start)
    logits, adam = start, {"step": 0, "m": [0.0] * 3, "v": [0.0] * 3}
    sequence = [[2.0, 0.5, 0.08], [1.5, 0.45, 0.09], [1.2, 0.47, 0.05]]
    for before, after in zip(
        sequence, sequence[1:], strict=False
    ):  # two steps: Adam's moments matter in the second
        losses = as_losses(famo, before, requires_grad=True)
        total = famo(losses)
        total.backward()
        weights, logits, adam = famo_by_hand(logits, adam, before, after)
        for name, weight in zip(famo.task_names, weights, strict=True):  # d total / d L_i = w_i
            assert losses[name].grad.item() == pytest.approx(weight, rel=1e-6)
        assert sum(weights) == pytest.approx(3.0)
        famo.after_step(as_losses(famo, after))
        assert famo.logits.tolist() == pytest.approx(logits, rel=1e-5, abs=1e-7)
    assert famo.optimizer.state_dict()["state"][0]["step"].item() == 2


def test_famo_weights_the_task_whose_loss_falls_slower_up():
    famo = FAMO(tasks("semseg", "depth"), lr=0.1)
    for _ in range(20):
        famo(as_losses(famo, [1.0, 1.0]))
        famo.after_step(as_losses(famo, [0.5, 0.95]))  # semseg halves, depth barely moves
    z = famo.logits.softmax(0)
    assert z[1] > 0.7 > z[0]


def test_famo_needs_its_forward_before_the_update_and_checks_options():
    famo = FAMO(tasks("semseg", "depth"))
    with pytest.raises(RuntimeError, match="forward"):
        famo.after_step(as_losses(famo, [1.0, 1.0]))
    with pytest.raises(KeyError, match="depth"):
        famo({"semseg": torch.tensor(1.0)})
    with pytest.raises(OptionError, match="^lr must be > 0, got -0.1$"):
        FAMO(tasks("semseg"), lr=-0.1)
    with pytest.raises(OptionError, match="^alpha must be a number, got 'high'"):
        GradNorm(tasks("semseg"), alpha="high")


# ---------------------------------------------------------------- GradNorm


def test_gradnorm_brings_gradient_norms_of_scale_1_to_100_together():
    balancer = GradNorm(tasks("semseg", "depth"), alpha=1.5, lr=0.025)
    torch.manual_seed(0)
    base = torch.randn(4, 1, 6, 8)
    features = torch.cat([base, base], 1).requires_grad_()  # (B, T, N, d), the same tokens for both tasks

    def losses():
        return {
            "semseg": 0.5 * features[:, 0].pow(2).sum(-1).mean(),
            "depth": 100 * 0.5 * features[:, 1].pow(2).sum(-1).mean(),  # 100 x the gradient
        }

    norms = balancer.gradient_norms(balancer.stack(losses()), features)
    # dL_1 / df_{b,0,n} = f_{b,0,n} / (B N): g_1 is the mean over b, n of its norm over the channels
    assert norms[0].item() == pytest.approx(base.norm(dim=-1).mean().item() / (4 * 6), rel=1e-5)
    assert (norms[1] / norms[0]).item() == pytest.approx(100.0, rel=1e-5)
    ratios = []
    for _ in range(300):
        balancer(losses(), features)
        weighted = balancer.task_weights.detach() * norms
        ratios.append((weighted[1] / weighted[0]).item())
    # from 100 to within a factor 2 for good (L1 steps of a fixed size circle the balance point)
    assert all(0.5 < ratio < 2.0 for ratio in ratios[150:]), ratios[150:]
    assert sum(ratios[150:]) / 150 == pytest.approx(1.0, abs=0.3)
    assert balancer.task_weights.sum().item() == pytest.approx(2.0)
    assert balancer.initial_losses.tolist() == pytest.approx([v.item() for v in losses().values()])


def test_gradnorm_restoring_force_favours_the_task_that_trains_slower():
    balancer = GradNorm(tasks("semseg", "depth"), alpha=1.5)
    norms = torch.tensor([1.0, 1.0])
    balancer.update(torch.tensor([1.0, 1.0]), norms)  # L(0)
    for _ in range(50):
        balancer.update(torch.tensor([0.2, 0.9]), norms)  # depth lags behind: it gets the larger weight
    weights = balancer.task_weights.detach()
    assert weights[1] > 1.2 > 0.8 > weights[0]


# ---------------------------------------------------------------- uncertainty weighting


def test_uncertainty_weights_converge_to_the_inverse_loss_scale():
    torch.manual_seed(0)
    noise = {"semseg": 0.1, "depth": 3.0}  # homoscedastic noise: MSE scales 0.01 and 9
    targets = {name: 1.0 + std * torch.randn(4096) for name, std in noise.items()}
    balancer = UncertaintyWeighting(tasks(*noise))
    means = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([means, *balancer.parameters()], lr=0.05)
    for _ in range(1500):
        losses = {name: (targets[name] - means[i]).pow(2).mean() for i, name in enumerate(noise)}
        optimizer.zero_grad()
        balancer(losses).backward()
        optimizer.step()
    weights = balancer.weights()
    for i, name in enumerate(noise):
        scale = (targets[name] - targets[name].mean()).pow(2).mean().item()
        assert weights[i].item() == pytest.approx(1 / (2 * scale), rel=0.02)  # w = 1 / (2 sigma^2)
    assert (weights[0] / weights[1]).item() == pytest.approx(900, rel=0.1)
    assert_weights_are_the_gradient(balancer)


def assert_weights_are_the_gradient(balancer):
    """The logged weights are what the combined loss multiplies each task loss by: d total / d L_j = w_j."""
    features = torch.randn(2, 2, 3, 4, generator=torch.Generator().manual_seed(0)).requires_grad_()
    losses = {name: (i + 1) * features[:, i].pow(2).mean() for i, name in enumerate(balancer.task_names)}
    total = balancer(losses, features)
    grads = torch.autograd.grad(total, [losses[name] for name in balancer.task_names])
    assert [g.item() for g in grads] == pytest.approx(balancer.weights().tolist(), rel=1e-6)


@pytest.mark.parametrize("kind", [FixedWeights, FAMO, GradNorm, UncertaintyWeighting])
def test_logged_weights_are_the_weights_of_the_combined_loss(kind):
    balancer = kind(
        [replace(task, weight=w) for task, w in zip(tasks("semseg", "depth"), (2.0, 3.0), strict=True)]
    )
    if isinstance(balancer, UncertaintyWeighting):
        balancer.log_variances.data = torch.tensor([0.5, -1.0])
    if isinstance(balancer, FAMO):
        balancer.logits.data = torch.tensor([0.5, -1.0])
    if isinstance(balancer, GradNorm):
        balancer.task_weights.data = torch.tensor([1.5, 0.5])
    assert_weights_are_the_gradient(balancer)


# ---------------------------------------------------------------- state: checkpoints, bf16, DDP


def round_trip(module: torch.nn.Module) -> dict:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_famo_and_gradnorm_state_survive_a_checkpoint_round_trip():
    sequence = [[2.0, 0.5], [1.7, 0.48], [1.5, 0.49], [1.4, 0.40], [1.1, 0.42], [1.0, 0.35]]
    features = torch.randn(2, 2, 3, 4)

    def famo_steps(famo, steps):
        for before, after in steps:
            famo(as_losses(famo, before))
            famo.after_step(as_losses(famo, after))

    def gradnorm_steps(gradnorm, steps):
        for before, _ in steps:
            gradnorm.update(torch.tensor(before), features[0, :, 0, :2].abs().sum(-1) * torch.tensor(before))

    steps = list(zip(sequence, sequence[1:], strict=False))
    for make, run in ((lambda: FAMO(tasks("semseg", "depth")), famo_steps),
                      (lambda: GradNorm(tasks("semseg", "depth")), gradnorm_steps)):  # fmt: skip
        straight, first = make(), make()
        run(straight, steps)
        run(first, steps[:3])
        resumed = make()
        resumed.load_state_dict(round_trip(first))
        run(resumed, steps[3:])
        state = "logits" if isinstance(straight, FAMO) else "task_weights"
        assert torch.equal(getattr(resumed, state), getattr(straight, state)), type(straight).__name__
        # without the optimizer's moments (only the weights kept), the continuation differs
        forgetful = make()
        forgetful.load_state_dict(
            {k: v for k, v in round_trip(first).items() if k != "_extra_state"}, strict=False
        )
        run(forgetful, steps[3:])
        assert not torch.equal(getattr(forgetful, state), getattr(straight, state))


@pytest.mark.parametrize("balancer", ["famo", "gradnorm", "uncertainty"])
def test_training_updates_logs_and_checkpoints_the_balancer(balancer, tmp_path):
    import lightning as L
    from hydra.utils import instantiate

    config = compose_config(f"balancer={balancer}", "data.tasks=[semseg,depth]")
    torch.manual_seed(0)
    module = instantiate(config.model, _convert_="all")
    datamodule = instantiate(config.data.datamodule, _convert_="all")
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, accumulate_grad_batches=2, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2  # 4 batches, 2 optimizer steps
    logged = trainer.logged_metrics
    assert {"train/weight/semseg", "train/weight/depth"} <= set(logged)
    weights = module.balancer.weights()
    assert logged["train/weight/depth"].item() == pytest.approx(weights[1].item())
    updates = {"famo": 2, "gradnorm": 4}.get(balancer)  # FAMO: per optimizer step; GradNorm: per batch
    if updates:
        assert module.balancer.optimizer.state_dict()["state"][0]["step"].item() == updates
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    own = next(iter(module.balancer.parameters()))
    assert (id(own) in optimized) == (balancer == "uncertainty")  # only UW's are the network optimizer's
    if balancer == "uncertainty":
        assert not torch.equal(module.balancer.log_variances.detach(), torch.zeros(2))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    fresh = instantiate(config.model, _convert_="all")
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    for key, value in module.balancer.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(fresh.balancer.state_dict()[key], value), key
    if balancer != "uncertainty":
        saved = checkpoint["state_dict"]["balancer._extra_state"]["optimizer"]["state"][0]
        live = module.balancer.optimizer.state[next(iter(module.balancer.parameters()))]
        assert saved["step"].item() == updates and torch.equal(saved["exp_avg"], live["exp_avg"])


def test_updates_are_float32_under_bf16_autocast():
    famo, gradnorm = FAMO(tasks("semseg", "depth")), GradNorm(tasks("semseg", "depth"))
    features = torch.randn(2, 2, 3, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = torch.nn.functional.linear(features, torch.eye(4))  # bf16 under autocast
        assert projected.dtype == torch.bfloat16
        losses = {"semseg": projected[:, 0].pow(2).mean(), "depth": projected[:, 1].abs().mean()}
        assert famo(losses).dtype == torch.float32 and gradnorm(losses, projected).dtype == torch.float32
    famo.after_step({name: value.detach() for name, value in losses.items()})
    assert famo.logits.dtype == gradnorm.task_weights.dtype == torch.float32
    assert torch.isfinite(famo.logits).all() and torch.isfinite(gradnorm.task_weights).all()


def _ddp_worker(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        famo, gradnorm = FAMO(tasks("semseg", "depth")), GradNorm(tasks("semseg", "depth"))
        for step in range(3):  # every process sees other losses and gradient norms
            before = torch.tensor([1.0 + rank + step, 0.5 - 0.1 * rank])
            famo({"semseg": before[0], "depth": before[1]})
            famo.after_step({"semseg": before[0] * 0.9, "depth": before[1] * (0.8 + 0.1 * rank)})
            gradnorm.update(before, torch.tensor([1.0 + 3 * rank, 2.0]))
        results[rank] = (famo.logits.detach().clone(), famo.weights(), gradnorm.task_weights.detach().clone())
        results[f"mean{rank}"] = mean_over_processes(torch.tensor([1.0 + rank, 4.0 * rank]))
    finally:
        dist.destroy_process_group()


def test_every_ddp_process_computes_the_same_weights_as_one_process_on_the_mean(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    for left, right in zip(results[0], results[1], strict=True):
        assert torch.equal(left, right)
    assert results["mean0"].tolist() == results["mean1"].tolist() == [1.5, 2.0]
    # one process fed the means over the two processes takes the same steps
    famo, gradnorm = FAMO(tasks("semseg", "depth")), GradNorm(tasks("semseg", "depth"))
    for step in range(3):
        before = (torch.tensor([1.0 + step, 0.5]) + torch.tensor([2.0 + step, 0.4])) / 2
        famo({"semseg": before[0], "depth": before[1]})
        after = (torch.tensor([1.0 + step, 0.5]) * torch.tensor([0.9, 0.8])
                 + torch.tensor([2.0 + step, 0.4]) * torch.tensor([0.9, 0.9])) / 2  # fmt: skip
        famo.after_step({"semseg": after[0], "depth": after[1]})
        gradnorm.update(before, torch.tensor([2.5, 2.0]))
    torch.testing.assert_close(results[0][0], famo.logits.detach())
    torch.testing.assert_close(results[0][2], gradnorm.task_weights.detach())


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("name", "kind"),
    [("fixed", FixedWeights), ("famo", FAMO), ("gradnorm", GradNorm), ("uncertainty", UncertaintyWeighting)],
)
def test_each_balancer_is_one_config_choice(name, kind):
    from hydra.utils import instantiate

    config = compose_config(f"balancer={name}")
    balancer = instantiate(config.model.balancer)(tasks("semseg", "depth"))
    assert type(balancer) is kind and balancer.task_names == ["semseg", "depth"]
    if name == "famo":
        assert (balancer.lr, balancer.weight_decay) == (0.025, 0.001)  # Argus's defaults
    if name == "gradnorm":
        assert balancer.alpha == 1.5
    assert instantiate(compose_config().model.balancer).func is FixedWeights  # the default


def test_fixed_weights_follow_the_task_weights():
    balancer = FixedWeights(
        [replace(task, weight=w) for task, w in zip(tasks("semseg", "depth"), (2.0, 3.0), strict=True)]
    )
    total = balancer({"semseg": torch.tensor(1.5), "depth": torch.tensor(0.5)})
    assert total.item() == pytest.approx(2.0 * 1.5 + 3.0 * 0.5)
