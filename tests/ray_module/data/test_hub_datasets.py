"""A Hugging Face dataset's card may name data files anywhere; only files inside the dataset's
own repository are loaded (issue 24, item 3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import datasets
import pytest

from protocol.run import DataRequest
from ray_module.data.examples import load_labelled
from ray_module.data.hub_datasets import card_files_outside_repo
from ray_module.data.texts import load_texts
from ray_module.errors import DataError
from tests.ray_module.data.conftest import HubRepos
from tests.ray_module.data.fake_hub import REVISION


def card(data_files: str) -> str:
    return f"---\nconfigs:\n- config_name: default\n  data_files: {data_files}\n---\n# A set\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file of the node outside any dataset: what a hostile card points at."""
    path = tmp_path / "node-secret" / "credential.csv"
    path.parent.mkdir()
    path.write_text("text,label\nnode-credential-abc123,1\n")
    return path


def test_the_library_itself_reads_a_file_the_card_names_outside_the_repository(
    tmp_path: Path, secret: Path
) -> None:
    """Why the check exists: ``datasets`` follows an absolute path in a card to any file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "inside.csv").write_text("text,label\nfine,0\n")
    (repo / "README.md").write_text(card(f"['{secret}']"))
    table = datasets.load_dataset(str(repo), split="train", cache_dir=str(tmp_path / "cache"))
    assert table["text"] == ["node-credential-abc123"]


@pytest.mark.parametrize(
    "entry",
    [
        "ABSOLUTE",
        "../other/data.csv",
        "data/../../escape.csv",
        "https://198.51.100.7/rows.csv",
        "hf://datasets/someone/else/data.csv",
        "zip://rows.csv::https://198.51.100.7/a.zip",
        "~/rows.csv",
    ],
)
def test_a_card_naming_a_file_outside_the_repository_is_refused_before_any_load(
    stand_in_hub: Callable[[HubRepos], list[str]], secret: Path, entry: str
) -> None:
    entry = str(secret) if entry == "ABSOLUTE" else entry
    asked = stand_in_hub({"evil/set": {"README.md": card(f"['{entry}']")}})
    with pytest.raises(DataError, match="outside the dataset's repository"):
        load_texts(DataRequest("huggingface", "evil/set"))
    # The card was read at the revision the hub named, and nothing else of it was asked for.
    files = f"/datasets/evil/set/resolve/{REVISION}"
    assert [request for request in asked if "evil/set" in request] == [
        "GET /api/datasets/evil/set",
        f"HEAD {files}/README.md",
        f"GET {files}/README.md",
        f"HEAD {files}/.huggingface.yaml",
    ]


def test_the_standalone_yaml_and_data_dir_are_checked_too_and_for_classifiers(
    stand_in_hub: Callable[[HubRepos], list[str]], secret: Path
) -> None:
    stand_in_hub(
        {
            "evil/yaml": {
                "README.md": card("data/train.csv"),
                ".huggingface.yaml": f"configs:\n- config_name: x\n  data_dir: {secret.parent}\n",
            },
            "evil/splits": {
                "README.md": card(f"\n  - split: train\n    path: [data/a.csv, '{secret}']")
            },
        }
    )
    with pytest.raises(DataError, match=r"config 'x' .* is an absolute path"):
        load_labelled(DataRequest("huggingface", "evil/yaml"))
    with pytest.raises(DataError, match=r"refused: config 'default' .* is an absolute path"):
        load_labelled(DataRequest("huggingface", "evil/splits"))


def test_cards_that_stay_inside_their_repository_pass() -> None:
    assert card_files_outside_repo({}) is None
    assert (
        card_files_outside_repo(
            {
                "configs": [
                    {"config_name": "a", "data_files": "data/*.parquet"},
                    {
                        "config_name": "b",
                        "data_files": [
                            {"split": "train", "path": ["train/**", "extra/x.csv"]},
                            {"split": "test", "path": "test.jsonl"},
                        ],
                        "data_dir": "b",
                    },
                ]
            }
        )
        is None
    )
    assert "not a list" in card_files_outside_repo({"configs": "x"})
