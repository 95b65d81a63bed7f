"""``streamrec simulate``: the command line of the user simulator (``apps/simulate.py``).

Kept apart from the simulator so that registering the command imports no PyTorch: the CLI
starts at once, and the simulator loads when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from streamrec.core.errors import InvalidInput

if TYPE_CHECKING:
    from streamrec.apps.simulate import SimulationReport

POLICIES = ("random", "popular", "base", "dqn")  # apps.simulate.POLICIES (tested equal)
console = Console()


def _table(report: SimulationReport) -> Table:
    base = report.results.get("base")
    table = Table(
        title=f"simulated users on {report.dataset}: {report.config.slates:,} slates "
        f"of {report.config.k} per policy, seed {report.config.seed}"
    )
    for column in ("policy", "CTR", "clicks/slate", "CTR vs base", "seconds"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, r in report.results.items():
        ratio = f"{r.ctr / base.ctr:.3f}" if base is not None and base.ctr else "-"
        table.add_row(name, f"{r.ctr:.4f}", f"{r.reward_per_slate:.3f}", ratio, f"{r.seconds:.1f}")
    return table


def register(app: typer.Typer) -> None:
    """Add ``streamrec simulate`` to the streamrec CLI."""

    @app.command()
    def simulate(
        data: str = typer.Option(
            "synthetic", "--data", "-d", help="A MovieLens folder, or `synthetic`."
        ),
        slates: int = typer.Option(2000, min=1, help="Slates served per policy."),
        k: int = typer.Option(10, min=1, max=200, help="Items per slate."),
        depth: int = typer.Option(50, min=1, max=200, help="Base candidates the DQN re-ranks."),
        policies: str = typer.Option(",".join(POLICIES), help="Comma-separated policies to run."),
        exploration: str = typer.Option(
            "epsilon_greedy", help="greedy, epsilon_greedy or softmax (the DQN's slates)."
        ),
        epsilon: float = typer.Option(0.05, min=0.0, max=1.0, help="For epsilon_greedy."),
        temperature: float = typer.Option(0.1, min=1e-6, help="For softmax."),
        base_epochs: int = typer.Option(20, min=1, help="Epochs of the base ranker (BPR)."),
        oracle_epochs: int = typer.Option(25, min=1, help="Epochs of the taste model (MF)."),
        seed: int = typer.Option(0, help="Seeds the users, the dice and every model."),
        out: Path = typer.Option(Path("var/simulation"), help="Where report.json and ctr.png go."),
    ) -> None:
        """Simulated users built from real ratings, served by `random`, `popular`, the static
        base ranker (`base`, BPR) and the DQN re-ranker (`dqn`) learning online through Kafka;
        prints cumulative CTR per policy and writes `report.json` and a CTR plot (`ctr.png`).

        Runs on embedded services of its own (nothing to install, nothing shared). True taste
        is an explicit MF trained on all ratings, which no policy sees; clicks follow it with a
        position bias of 1/log2(position + 2). See `apps/simulate.py` for the model.
        """
        from streamrec.apps import simulate as simulation  # PyTorch loads only for this command
        from streamrec.core.datasets import load_movielens, synthetic

        try:
            config = simulation.SimulationConfig(
                slates=slates,
                k=k,
                depth=max(depth, k),
                exploration=exploration,
                epsilon=epsilon,
                temperature=temperature,
                base_epochs=base_epochs,
                oracle_epochs=oracle_epochs,
                seed=seed,
                policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
            )
            if exploration not in ("greedy", "epsilon_greedy", "softmax"):
                raise InvalidInput(
                    f"exploration must be greedy, epsilon_greedy or softmax, not {exploration!r}"
                )
            raw = synthetic(seed=seed) if data == "synthetic" else load_movielens(data)
            with console.status("setting up") as status:
                report = simulation.run_simulation(raw, config, on_stage=lambda s: status.update(s))
        except (InvalidInput, OSError, ValueError) as error:
            raise typer.BadParameter(str(error)) from None
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report.as_dict(), indent=2))
        plot = simulation.plot_curves(report, out / "ctr.png")
        console.print(_table(report))
        console.print(f"wrote {out / 'report.json'} and {plot}")
