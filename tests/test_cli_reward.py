"""`trl-rfm reward`: a `trl reward` command line and YAML recipe work unchanged (tiny local model and JSONL data)."""

import json
import os

import pytest

from trl_rfm.cli import main
from trl_rfm.testing import save_tiny_causal_lm


ROWS = [
    {"prompt": "What colour is the sky?", "chosen": " Blue.", "rejected": " Green.", "user_id": "alice"},
    {"prompt": "Name a fruit.", "chosen": " An apple.", "rejected": " A chair.", "user_id": "bob"},
    {"prompt": "Where do fish live?", "chosen": " In water.", "rejected": " On the moon.", "user_id": "alice"},
    {"prompt": "What do bees make?", "chosen": " Honey.", "rejected": " Steel.", "user_id": "bob"},
] * 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-reward")
    data = root / "preferences.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    texts = [row[key] for row in ROWS for key in ("prompt", "chosen", "rejected")]
    model = save_tiny_causal_lm(root / "tiny-lm", texts, hidden_size=16, num_hidden_layers=1, intermediate_size=32)
    return {"data": str(data), "model": model, "root": root}


# A `trl reward` command line (flags of ScriptArguments, RewardConfig and ModelConfig only), as a TRL user writes it.
TRL_FLAGS = [
    "--dataset_train_split", "train",
    "--max_steps", "2",
    "--per_device_train_batch_size", "4",
    "--learning_rate", "1e-3",
    "--center_rewards_coefficient", "0.01",
    "--max_length", "64",
    "--logging_steps", "1",
    "--report_to", "none",
    "--save_strategy", "no",
    "--use_cpu", "True",
    "--bf16", "False",
    "--dtype", "float32",
]  # fmt: skip


def _check_output(output_dir, users=True):
    files = set(os.listdir(output_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert ("user_weights.safetensors" in files) == users
    from trl_rfm import RewardFeatureModel

    model = RewardFeatureModel.from_pretrained(output_dir)
    assert model.user_ids == (["alice", "bob"] if users else [])


def test_trl_reward_command_line(inputs):
    output_dir = str(inputs["root"] / "out-flags")
    main(["reward", "--model_name_or_path", inputs["model"], "--dataset_name", inputs["data"], "--output_dir", output_dir]
         + TRL_FLAGS + ["--num_features", "4"])  # fmt: skip
    _check_output(output_dir)


def test_trl_reward_yaml_recipe_with_lora(inputs):
    output_dir = str(inputs["root"] / "out-yaml")
    recipe = inputs["root"] / "recipe.yaml"
    lines = [f"model_name_or_path: {inputs['model']}", f"dataset_name: {inputs['data']}", f"output_dir: {output_dir}"]
    for flag, value in zip(TRL_FLAGS[::2], TRL_FLAGS[1::2]):
        lines.append(f"{flag[2:]}: {json.dumps(value) if value == 'no' else value}")  # YAML reads a bare no as false
    lines += ["use_peft: true", "lora_task_type: SEQ_CLS", "lora_r: 4", "user_column: user_id"]
    recipe.write_text("\n".join(lines) + "\n")
    main(["reward", "--config", str(recipe)])
    files = set(os.listdir(output_dir))
    assert {"adapter_config.json", "adapter_model.safetensors", "user_weights.safetensors"} <= files


def test_help_names_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["reward", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: trl-rfm reward") and "--model_name_or_path" in out
