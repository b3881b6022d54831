import torch

from tiger.model.nn.decoder import SharedDecoder, TaskHeads
from tiger.tasks import make_task


def test_decoder_and_heads_give_each_task_its_channels_at_the_input_size():
    tasks = [make_task("semseg", num_classes=40), make_task("normals"), make_task("edge")]
    decoder = SharedDecoder(dim=16, width=32, num_upsamples=2)
    heads = TaskHeads(tasks, decoder.out_channels)
    features = decoder(torch.randn(2, 3, 12, 16), (3, 4))
    assert features.shape == (2, 3, 8, 12, 16)
    logits = heads(features, (50, 70))
    assert {k: tuple(v.shape) for k, v in logits.items()} == {
        "semseg": (2, 40, 50, 70),
        "normals": (2, 3, 50, 70),
        "edge": (2, 1, 50, 70),
    }


def test_decoder_weights_are_shared_and_tasks_do_not_mix():
    torch.manual_seed(0)
    decoder = SharedDecoder(dim=8, width=16, num_upsamples=1)
    tokens = torch.randn(1, 2, 6, 8)
    out = decoder(tokens, (2, 3))
    swapped = decoder(tokens.flip(1), (2, 3))
    torch.testing.assert_close(out.flip(1), swapped)
