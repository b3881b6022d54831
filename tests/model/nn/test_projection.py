import torch

from tiger.model.nn.projection import ExpertProjection


def test_projection_is_layernorm_of_ffn_per_token():
    torch.manual_seed(0)
    projection = ExpertProjection(in_channels=5, dim=8, hidden=6)
    features = torch.randn(2, 5, 3, 4)
    tokens = projection(features)
    assert tokens.shape == (2, 12, 8)
    # token n = (h, w) in row-major order, LayerNorm(FFN(F_k[:, :, h, w])) (eq. 2)
    expected = projection.norm(projection.ffn(features[1, :, 2, 1]))
    torch.testing.assert_close(tokens[1, 2 * 4 + 1], expected)
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 12), atol=1e-5, rtol=0)
