import torch

from tiger.model.nn.interaction import SetAttention


def test_members_exchange_information_only_within_a_position():
    torch.manual_seed(0)
    attention = SetAttention(num_members=3, dim=16, num_heads=4).eval()
    tokens = torch.randn(2, 3, 5, 16)
    out = attention(tokens)
    assert out.shape == tokens.shape
    changed = tokens.clone()
    changed[0, 1, 2] += 1.0  # one member at one position
    delta = (attention(changed) - out).abs().sum(-1)
    assert delta[0, :, 2].min() > 0  # every member at that position sees it
    delta[0, :, 2] = 0
    assert delta.max() == 0  # no other position or image does


def test_identity_embeddings_break_member_symmetry():
    torch.manual_seed(1)
    attention = SetAttention(num_members=2, dim=8, num_heads=2).eval()
    same = torch.randn(1, 1, 4, 8).expand(1, 2, 4, 8)
    out = attention(same)
    assert not torch.allclose(out[:, 0], out[:, 1])
