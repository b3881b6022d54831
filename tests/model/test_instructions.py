import pytest
import torch

from tiger.model.instructions import TaskRepresentation, encode_instructions, resolve_encoder_path
from tiger.tasks import DEFAULT_INSTRUCTIONS


@pytest.fixture(scope="module")
def embeddings():
    texts = [DEFAULT_INSTRUCTIONS[name] for name in ("depth", "normals", "semseg")]
    return encode_instructions(texts)


def test_default_encoder_is_the_offline_minilm(embeddings):
    assert "minilm" in resolve_encoder_path("all-MiniLM-L6-v2").lower()
    assert embeddings.shape == (3, 384)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3), atol=1e-4, rtol=0)
    # a real sentence model: the two geometric instructions are closer than depth and semantics
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2]


def test_instruction_embeddings_are_deterministic(embeddings):
    again = encode_instructions([DEFAULT_INSTRUCTIONS["depth"]])
    torch.testing.assert_close(again[0], embeddings[0])


def test_task_representation_is_layernorm_plus_prompt(embeddings):
    representation = TaskRepresentation(embeddings, num_tasks=3)
    torch.nn.init.normal_(representation.prompts)
    expected = torch.nn.functional.layer_norm(embeddings, (384,)) + representation.prompts  # eq. 3
    torch.testing.assert_close(representation(), expected)
    assert not representation.instruction_embeddings.requires_grad
    assert "instruction_embeddings" in representation.state_dict()  # saved: no text encoder needed later


def test_learnable_task_embeddings_only():
    representation = TaskRepresentation(None, num_tasks=4, dim=32)
    assert representation().shape == (4, 32) and representation().requires_grad
    assert "instruction_embeddings" not in representation.state_dict()


def test_embedding_count_must_match_tasks(embeddings):
    with pytest.raises(ValueError, match="3 instruction embeddings for 2 tasks"):
        TaskRepresentation(embeddings, num_tasks=2)


def test_unknown_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises((RuntimeError, OSError), match="instruction encoder"):
        encode_instructions(["x"], encoder=str(tmp_path / "no-such-model"))
