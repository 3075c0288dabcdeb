"""The `trl-rfm` command line: version, usage naming the command, one flag vocabulary (old spellings warn)."""

import pytest

import trl_rfm
from trl_rfm.cli import main
from trl_rfm.cli.common import rename_deprecated_flags
from trl_rfm.data import load_data_file


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"trl-rfm {trl_rfm.__version__}"


@pytest.mark.parametrize("command", ["adapt", "evaluate", "export", "demo"])
def test_usage_names_the_command(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert capsys.readouterr().out.startswith(f"usage: trl-rfm {command}")


def test_export_reads_the_model_with_the_common_flag(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    usage = capsys.readouterr().out
    assert "--model_name_or_path" in usage and "--model_path" not in usage.replace("--model_path` is", "")


def test_old_flag_spellings_are_deprecated_aliases():
    with pytest.warns(DeprecationWarning, match="--model_path"):
        argv = rename_deprecated_flags(["--model_path", "a", "--synthetic_num_users=3", "--user_id", "b"])
    assert argv == ["--model_name_or_path", "a", "--num_users=3", "--user_id", "b"]


def test_data_files_are_read_by_extension(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "user_id": 1}\n')
    assert load_data_file(tmp_path / "pairs.jsonl")["chosen"] == ["a"]
    with pytest.raises(ValueError, match=".jsonl"):
        load_data_file(tmp_path / "pairs.txt")


def test_toys_live_in_trl_rfm_testing_only():
    import trl_rfm.testing

    assert hasattr(trl_rfm.testing, "make_synthetic_preferences")
    assert not hasattr(trl_rfm, "make_synthetic_preferences")
