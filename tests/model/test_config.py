"""TigerConfig: every value checked when it is built, errors naming the key, and the checkpoint round trip."""

from __future__ import annotations

import pytest

from tiger.model import TigerConfig
from tiger.options import OptionError


@pytest.mark.parametrize(
    "grid, shown",
    [([4.5, 5], r"\[4.5, 5\] \(4.5 is not"), ([0, 5], r"\(0 is not"), ([-1, 5], r"\(-1 is not"),
     (["4", 5], r"\('4' is not"), ([4], r"\[4\]$")],
)  # fmt: skip
def test_grid_is_never_truncated(tiny_config, grid, shown):
    with pytest.raises(OptionError, match=r"^grid must be 2 integers \(H, W\) >= 1, got .*" + shown):
        tiny_config(grid=grid)


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
        ({"num_semseg_classes": None}, r"^num_semseg_classes must be an integer, got None"),
        ({"tasks": ["depth", "flow"]}, r"^tasks must be one of .*'depth'.*got 'flow'$"),
        ({"tasks": ["depth", "depth"]}, r"^tasks names a task twice: \['depth', 'depth'\]$"),
        ({"tasks": []}, r"^tasks must be a non-empty list of task names"),
        ({"experts": {}}, r"^experts must name at least one expert"),
        ({"experts": {"sam": {"weights": None}}}, r"^experts.sam must be a spec with a 'name' or"),
        ({"task_weights": {"depth": -1.0}}, r"^task_weights.depth must be >= 0, got -1.0$"),
        ({"task_weights": {"depth": float("inf")}}, r"^task_weights.depth must be a finite number"),
        ({"task_weights": {"flow": 1.0}}, r"^task_weights must be one of .* got 'flow'$"),
        ({"instructions": {"encoder": None, "texts": {"depth": ""}}}, r"^instructions.texts.depth must"),
        ({"instructions": {"encoder": None, "texts": {"depth": "  "}}}, r"^instructions.texts.depth must be"),
        ({"instructions": {"encoder": None, "texts": {"flow": "x"}}}, r"^instructions.texts must be one of"),
        ({"instructions": {"encoder": "", "texts": {}}}, r"^instructions.encoder must be a sentence-trans"),
        ({"instructions": {"encoder": None, "prompt": "x"}}, r"^instructions.prompt is not an option"),
    ],
)  # fmt: skip
def test_every_value_is_checked_and_named(tiny_config, setting, message):
    with pytest.raises(OptionError, match=message):
        tiny_config(**setting)


def test_an_unknown_option_is_a_type_error_naming_it(tiny_config):
    with pytest.raises(TypeError, match="no_such_option"):
        tiny_config(no_such_option=1)


def test_sizes_of_switched_off_parts_are_not_checked(tiny_config):
    config = tiny_config(
        num_heads=5, expert_interaction=False, task_interaction=False, task_interaction_layers=0
    )
    assert config.num_heads == 5 and not config.expert_interaction


def test_values_are_normalised_and_frozen(tiny_config):
    config = tiny_config(experts=("clip_tiny", "sam_tiny"), grid=[3, 4], task_weights={"depth": 2})
    assert config.grid == (3, 4) and config.tasks == ("semseg", "depth")
    assert config.experts == {"clip": {"name": "clip_tiny"}, "sam": {"name": "sam_tiny"}}
    assert config.task_weights == {"depth": 2.0}
    with pytest.raises(AttributeError):
        config.dim = 64  # type: ignore[misc]


def test_instruction_texts_default_to_the_task_entries(tiny_config):
    from tiger.tasks import TASKS

    config = tiny_config(instructions={"encoder": None, "texts": {"depth": "Estimate depth."}})
    assert config.instruction_texts() == [TASKS["semseg"].instruction, "Estimate depth."]
    assert config.instruction_encoder is None
    assert TigerConfig(experts={"c": {"name": "clip_tiny"}}, tasks=["depth"], grid=[1, 1]).instruction_encoder


def test_a_list_of_expert_specs_is_keyed_by_name(tiny_config):
    config = tiny_config(experts=[{"name": "clip_tiny"}, {"name": "sam_tiny", "seed": 3}])
    assert config.experts == {"clip_tiny": {"name": "clip_tiny"}, "sam_tiny": {"name": "sam_tiny", "seed": 3}}


def test_to_dict_round_trips(tiny_config):
    config = tiny_config(task_weights={"semseg": 1.0, "depth": 0.5}, decoder_upsamples=1)
    stored = config.to_dict()
    assert all(
        isinstance(value, (dict, list, str, int, float, bool, type(None))) for value in stored.values()
    )
    assert TigerConfig(**stored) == config
