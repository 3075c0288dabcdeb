"""`trl-rfm data fetch polis` and `trl_rfm.data.fetch`, offline: a local git repository with tiny stand-in CSVs plays
openData (a pinned commit that is not the tip, a folder outside the manifest), and the manifest is pointed at it. The
real manifest is checked against the real data when that is present."""

import dataclasses
import os
import subprocess

import pytest

from trl_rfm.cli import main
from trl_rfm.data import (
    POLIS_MANIFEST,
    DataManifest,
    check_data_files,
    default_polis_dir,
    fetch_data,
    load_polis_votes,
)
from trl_rfm.data import fetch as fetch_module
from trl_rfm.data.fetch import count_csv_rows


# A port nothing listens on: git fails at once with "connection refused", as it does without a network.
UNREACHABLE = "http://127.0.0.1:9/compdemocracy/openData.git"

VOTES = "timestamp,datetime,comment-id,voter-id,vote\n" + "".join(
    f"{1400000000000 + i},Wed Jun 18 08:16:54 WIB 2014,{i % 2},{i // 2},{1 if (i + i // 2) % 2 else -1}\n"
    for i in range(8)
)
COMMENTS = (
    "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body\n"
    '1400000000000,Wed,0,0,2,2,1,"A statement\nwritten on two lines"\n'
    "1400000000001,Wed,1,1,2,2,1,Another statement\n"
)
SUMMARY = "topic,A stand-in topic\nurl,https://example.org\nconversation-description,Tiny\n"
PARTICIPANTS = "participant,group-id,0,1\n0,0,1,-1\n1,1,-1,1\n"
STAND_IN_ROWS = {"votes.csv": 8, "comments.csv": 2, "summary.csv": 3, "participants-votes.csv": 2}


def _git(*arguments, cwd):
    subprocess.run(["git", *arguments], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def stand_in(tmp_path) -> DataManifest:
    """openData in miniature: two conversations, a folder the manifest does not name, the README; the manifest pins
    the first commit, and a second one (the tip) adds a vote, so a checkout of the tip would fail the check."""
    remote = tmp_path / "openData"
    for folder in ("alpha", "beta", "not-in-manifest"):
        (remote / folder).mkdir(parents=True)
        for name, text in (
            ("votes.csv", VOTES),
            ("comments.csv", COMMENTS),
            ("summary.csv", SUMMARY),
            ("participants-votes.csv", PARTICIPANTS),
        ):
            (remote / folder / name).write_text(text)
    (remote / "README.md").write_text("Stand-in. Data was gathered using the Polis software; CC BY 4.0.\n")
    _git("init", "--quiet", cwd=remote)
    _git("config", "uploadpack.allowFilter", "true", cwd=remote)  # as GitHub: partial clones (--filter=blob:none)
    _git("add", ".", cwd=remote)
    _git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "--quiet", "-m", "pinned", cwd=remote)
    pinned = subprocess.run(["git", "rev-parse", "HEAD"], cwd=remote, capture_output=True, text=True).stdout.strip()
    with open(remote / "alpha" / "votes.csv", "a") as handle:
        handle.write("1400000000099,Thu,1,9,1\n")
    _git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "--quiet", "-am", "tip", cwd=remote)
    return DataManifest(
        name="Polis",
        repository=remote.as_uri(),  # file://, so that git fetches as from a server (shallow, filtered)
        revision=pinned,
        files={f"{folder}/{name}": rows for folder in ("alpha", "beta") for name, rows in STAND_IN_ROWS.items()},
        headerless_files=frozenset({"summary.csv"}),
        copied_files={"README.md": "UPSTREAM_README.md"},
    )


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment would turn "connection refused" into the proxy's answer.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_rows_are_csv_records_after_the_header(tmp_path):
    path = tmp_path / "comments.csv"
    path.write_text(COMMENTS + "\n")  # a quoted line break and a trailing blank line
    assert count_csv_rows(path) == 2
    assert count_csv_rows(path, header=False) == 3


def test_fetch_checks_out_the_pinned_commit_of_the_manifests_folders(stand_in, tmp_path):
    output_dir = tmp_path / "data" / "polis"
    written = fetch_data(output_dir, stand_in)
    assert sorted(written) == sorted([*stand_in.files, "UPSTREAM_README.md"])
    assert check_data_files(output_dir, stand_in) == []  # the pinned commit's 8 votes, not the tip's 9
    assert sorted(os.listdir(output_dir)) == ["UPSTREAM_README.md", "alpha", "beta"]  # no .git, no other folder
    assert os.listdir(output_dir.parent) == ["polis"]  # the temporary checkout is gone
    votes = load_polis_votes(output_dir)  # the layout the loaders read
    assert sorted(set(votes["conversation"])) == ["alpha", "beta"]
    # Already there: nothing to fetch, so no network either.
    assert fetch_data(output_dir, dataclasses.replace(stand_in, repository=UNREACHABLE)) == []


def test_rows_that_differ_from_the_manifest_are_an_error_and_nothing_is_written(stand_in, tmp_path):
    wrong = dataclasses.replace(stand_in, files={**stand_in.files, "alpha/votes.csv": 9})
    with pytest.raises(ValueError, match=r"alpha/votes.csv: 8 rows, expected 9"):
        fetch_data(tmp_path / "polis", wrong)
    assert os.listdir(tmp_path) == ["openData"]


def test_different_files_in_the_output_folder_are_not_overwritten(stand_in, tmp_path):
    output_dir = tmp_path / "polis"
    (output_dir / "alpha").mkdir(parents=True)
    (output_dir / "alpha" / "votes.csv").write_text("timestamp,datetime,comment-id,voter-id,vote\n")
    with pytest.raises(ValueError, match=r"differ from the manifest \(alpha/votes.csv: 0 rows, expected 8\)"):
        fetch_data(output_dir, stand_in)
    assert count_csv_rows(output_dir / "alpha" / "votes.csv") == 0


def test_cli_fetches_into_output_dir(stand_in, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(fetch_module.MANIFESTS, "polis", stand_in)
    output_dir = tmp_path / "polis"
    main(["data", "fetch", "polis", "--output_dir", str(output_dir)])
    out = capsys.readouterr().out
    assert "Fetched 8 files (and UPSTREAM_README.md); every row count matches the manifest." in out
    assert f"--data_dir {output_dir}" in out and "CC BY 4.0" in out
    main(["data", "fetch", "polis", "--output_dir", str(output_dir)])
    assert "Nothing fetched" in capsys.readouterr().out


def test_cli_default_output_dir_is_where_the_benchmarks_look(stand_in, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(fetch_module.MANIFESTS, "polis", stand_in)
    monkeypatch.setenv("TRL_RFM_POLIS_DIR", str(tmp_path / "from-env"))
    assert default_polis_dir() == str(tmp_path / "from-env")
    main(["data", "fetch", "polis"])
    assert check_data_files(tmp_path / "from-env", stand_in) == []
    assert "--data_dir" not in capsys.readouterr().out


def test_default_polis_dir_without_the_variable_is_beside_the_checkout(monkeypatch):
    monkeypatch.delenv("TRL_RFM_POLIS_DIR", raising=False)
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert default_polis_dir() == os.path.normpath(os.path.join(checkout, "..", "shared", "data", "polis"))


def test_cli_without_network_fails_with_one_line(stand_in, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(fetch_module.MANIFESTS, "polis", dataclasses.replace(stand_in, repository=UNREACHABLE))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "fetch", "polis", "--output_dir", str(tmp_path / "polis")])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1, error
    assert error.startswith(f"trl-rfm data: error: Could not fetch the Polis data from {UNREACHABLE}")
    assert "Is the network available?" in error and "docs/datasets.md" in error
    assert sorted(os.listdir(tmp_path)) == ["openData"]  # no output folder, no temporary checkout left


def test_cli_usage_and_unknown_dataset(capsys):
    main(["data", "--help"])
    assert capsys.readouterr().out.startswith("usage: trl-rfm data fetch <dataset>")
    with pytest.raises(SystemExit):
        main(["data", "fetch", "polis", "--help"])
    assert capsys.readouterr().out.startswith("usage: trl-rfm data fetch polis")
    with pytest.raises(SystemExit):
        main(["data", "fetch", "prism"])
    assert "unknown dataset 'prism'; one of: polis" in capsys.readouterr().err


def test_manifest_names_the_six_conversations():
    assert POLIS_MANIFEST.folders == [
        "15-per-hour-seattle",
        "canadian-electoral-reform",
        "football-concussions",
        "scoop-hivemind.affordable-housing",
        "scoop-hivemind.taxes",
        "scoop-hivemind.ubi",
    ]
    assert len(POLIS_MANIFEST.revision) == 40


@pytest.mark.polis_data
def test_real_polis_data_matches_the_manifest():
    assert check_data_files(default_polis_dir(), POLIS_MANIFEST) == []
