import math

import torch

from tiger.model.nn.router import HyperQueryProjection, QueryEncoder, TokenRouter


def test_hyper_network_equals_explicit_low_rank_weight():
    torch.manual_seed(0)
    hyper = HyperQueryProjection(dim=12, task_dim=10, rank=3, hidden=8)
    torch.nn.init.normal_(hyper.v)  # move away from the zero init so the low-rank term counts
    torch.nn.init.normal_(hyper.b0)
    tasks, queries = torch.randn(4, 10), torch.randn(2, 5, 12)
    gate, shift = hyper.g(tasks), hyper.h(tasks)
    for t in range(4):
        explicit = hyper.w0 + hyper.u @ torch.diag(gate[t]) @ hyper.v.T  # eq. 4, written out
        bias = hyper.b0 + shift[t]
        weight, b = hyper.weight(tasks)
        torch.testing.assert_close(weight[t], explicit)
        torch.testing.assert_close(b[t], bias)
        torch.testing.assert_close(hyper(queries, tasks)[:, t], queries @ explicit + bias)  # eq. 5


def test_hyper_network_starts_at_w0_and_depends_on_task_after_update():
    torch.manual_seed(1)
    hyper = HyperQueryProjection(dim=8, task_dim=6, rank=2, hidden=4)
    weight, _ = hyper.weight(torch.randn(3, 6))
    torch.testing.assert_close(weight, hyper.w0.expand(3, 8, 8))
    torch.nn.init.normal_(hyper.v)
    weight, _ = hyper.weight(torch.randn(3, 6))
    assert not torch.allclose(weight[0], weight[1])


def test_routing_hand_computed_case():
    # one task, two experts, two tokens, d = 4: scores = q . F / 2
    queries = torch.tensor([[[[2.0, 0, 0, 0], [0, 0, 4.0, 0]]]])  # (B=1, T=1, N=2, d=4)
    experts = torch.tensor(
        [[[[1.0, 0, 0, 0], [0, 0, 1.0, 0]], [[0, 1.0, 0, 0], [0, 0, 0, 1.0]]]]
    )  # (1, M=2, 2, 4)
    fused, alpha = TokenRouter()(queries, experts)
    # token 0: scores (1, 0) -> softmax; token 1: scores (2, 0)
    a0 = math.exp(1) / (math.exp(1) + 1)
    a1 = math.exp(2) / (math.exp(2) + 1)
    torch.testing.assert_close(alpha[0, 0], torch.tensor([[a0, a1], [1 - a0, 1 - a1]]))
    torch.testing.assert_close(fused[0, 0, 0], torch.tensor([a0, 1 - a0, 0, 0]))
    torch.testing.assert_close(fused[0, 0, 1], torch.tensor([0, 0, a1, 1 - a1]))


def test_alpha_sums_to_one_over_experts():
    torch.manual_seed(2)
    fused, alpha = TokenRouter()(torch.randn(2, 3, 7, 16) * 5, torch.randn(2, 4, 7, 16))
    assert alpha.shape == (2, 3, 4, 7) and fused.shape == (2, 3, 7, 16)
    torch.testing.assert_close(alpha.sum(2), torch.ones(2, 3, 7))
    assert (alpha >= 0).all()


def test_query_encoder_gives_one_query_per_token_on_any_grid():
    encoder = QueryEncoder(dim=16, width=16)
    assert encoder(torch.rand(2, 3, 40, 56), (3, 5)).shape == (2, 15, 16)
    assert encoder(torch.rand(1, 3, 17, 23), (4, 4)).shape == (1, 16, 16)
