from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from streamrec.trainer.cli import register


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("STREAMREC_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env from the repo
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(app, [*args, "--var-dir", str(tmp_path / "var")])

    return invoke


def test_train_then_eval_with_report(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run(
        "train", "--model", "bpr", "--data", "synthetic", "--epochs", "2", "--threads", "1"
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "offline run: registered bpr v1 (active in this run)" in said
    assert "this version cannot serve live traffic" in said
    run_dir = tmp_path / "var" / "offline" / "synthetic"
    assert (run_dir / "models" / "bpr" / "v1" / "weights.pt").is_file()
    report = tmp_path / "out.html"
    result = run("eval", "--model", "bpr", "--data", "synthetic", "--report", str(report))
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.output
    text = report.read_text()
    assert "<svg" in text and "ndcg@10" in text


def test_doc2vec_trains_from_the_catalog(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run("train", "--model", "doc2vec", "--data", "synthetic")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "var" / "offline" / "synthetic"
    assert (run_dir / "models" / "doc2vec" / "v1" / "arrays.npz").is_file()


def test_offline_training_leaves_the_live_database_untouched(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The live SQLite database (catalog, id registry, model registry) is not even created."""
    result = run("train", "--model", "doc2vec", "--data", "synthetic")
    assert result.exit_code == 0, result.output
    assert "offline" in result.output
    assert not (tmp_path / "var" / "streamrec.db").exists()
    assert not (tmp_path / "var" / "models").exists()


def test_warm_start_from_the_active_version(run) -> None:  # type: ignore[no-untyped-def]
    args = ("train", "--model", "mf", "--data", "synthetic", "--epochs", "1", "--threads", "1")
    result = run(*args, "--warm-start")
    assert result.exit_code == 2 and "no active version to start from" in result.output
    assert run(*args).exit_code == 0
    result = run(*args, "--warm-start")
    assert result.exit_code == 0, result.output
    assert "mf v2" in result.output
    said = " ".join(result.output.split())
    assert re.search(
        r"warm-started from v1: \d+ users and 500 items carried over, 0 and 0 new", said
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--model", "bpr", "--data", "/no/such/folder"), "does not exist"),
        (("train", "--model", "nope", "--data", "synthetic"), "unknown model 'nope'"),
        (("train", "--model", "dqn", "--data", "synthetic"), "use rerank=dqn"),
        (("eval", "--model", "popular", "--data", "synthetic"), "popular is served from"),
        (("eval", "--model", "sasrec", "--data", "synthetic"), "no active version"),
        (("eval", "--model", "doc2vec", "--data", "synthetic"), "no ranking evaluation"),
    ],
)
def test_errors_are_one_line_messages(run, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
