"""A user simulator built from real ratings, and the DQN re-ranker's online loop run in it
(``streamrec simulate``; ``benchmarks/online_rl.py``).

The world
    Ratings are split by time: the first ``train_fraction`` are the past. They train the base
    ranker (BPR) and are replayed through Kafka as the users' history (their feature state).
    True taste is a held-out model: explicit MF trained on *all* ratings, the future included,
    which no policy sees. A user examines position p with probability 1 / log2(p + 2)
    (position bias) and clicks an examined item with probability
    sigmoid(attract_scale · (r̂ - attract_center)). Every policy serves the same sequence of
    users and meets the same uniform draw per (slate, position) (common random numbers), so a
    difference in CTR comes from the policies, not from the dice.

The policies
    ``random``; ``popular`` (past counts); ``base`` (BPR's top k); ``dqn``: BPR's top
    ``depth`` re-ranked by the served DQN with exploration, through the code behind
    ``rerank=dqn`` (``trainer.policy.RLServer``). Every policy leaves out what the user has
    already rated or clicked.

The online loop (``dqn``)
    Each slate is published as an impression with its policy log and each click as a click
    event, through Kafka, with simulated event times (``seconds_per_slate`` apart). The
    features and online-RL consumer groups consume them; the learner trains and publishes
    snapshots to the model registry; the server picks each one up on a later slate. Every
    ``sync_every`` slates the simulator waits until both groups have consumed everything and
    the learner has run the updates it owes, so the result does not depend on how fast this
    machine is (a live system would serve on while the learner catches up).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from streamrec.core.datasets import InteractionData
from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.core.settings import Settings
from streamrec.schemas.events import ClickEvent, ImpressionEvent
from streamrec.trainer.data import build
from streamrec.trainer.models.base import Query

if TYPE_CHECKING:
    from streamrec.stores.factory import Stores

POLICIES = ("random", "popular", "base", "dqn")
VARIANT = "simulation"


@dataclass(frozen=True)
class SimulationConfig:
    slates: int = 2000  # served per policy
    k: int = 10  # slate size
    depth: int = 50  # base candidates the DQN re-ranks
    train_fraction: float = 0.8  # the past: base ranker and feature history
    min_history: int = 5  # users with fewer past ratings are not simulated
    attract_center: float = 4.0  # true rating with a 50% click chance once examined
    attract_scale: float = 3.0
    base_epochs: int = 20
    oracle_epochs: int = 25
    seconds_per_slate: float = 1.0  # simulated event time between slates
    window_s: float = 5.0  # the learner's feedback window, in simulated seconds
    sync_every: int = 20
    exploration: str = "epsilon_greedy"
    epsilon: float = 0.05
    temperature: float = 0.1
    train_every: int = 4  # new transitions per gradient step
    snapshot_every_updates: int = 50
    checkpoints: int = 20  # points on each CTR curve
    seed: int = 0
    policies: tuple[str, ...] = POLICIES

    def __post_init__(self) -> None:
        unknown = set(self.policies) - set(POLICIES)
        if unknown or not self.policies:
            raise InvalidInput(
                f"policies must be among {', '.join(POLICIES)}; got "
                f"{', '.join(sorted(unknown)) or 'none'}"
            )
        if self.slates < 1 or self.k < 1 or self.depth < self.k:
            raise InvalidInput("slates and k must be >= 1 and depth >= k")
        if not 0.0 < self.train_fraction < 1.0:
            raise InvalidInput("train_fraction must be in (0, 1)")


@dataclass
class PolicyResult:
    policy: str
    slates: int = 0
    shown: int = 0
    clicks: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)  # (slates, cumulative CTR)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ctr(self) -> float:
        return self.clicks / self.shown if self.shown else 0.0

    @property
    def reward_per_slate(self) -> float:
        return self.clicks / self.slates if self.slates else 0.0


@dataclass
class SimulationReport:
    config: SimulationConfig
    dataset: str
    users: int
    items: int
    results: dict[str, PolicyResult]
    setup_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "dataset": self.dataset,
            "users": self.users,
            "items": self.items,
            "setup_seconds": round(self.setup_seconds, 1),
            "results": {
                name: {
                    "ctr": r.ctr,
                    "reward_per_slate": r.reward_per_slate,
                    "slates": r.slates,
                    "shown": r.shown,
                    "clicks": r.clicks,
                    "seconds": round(r.seconds, 2),
                    "curve": r.curve,
                    **r.extra,
                }
                for name, r in self.results.items()
            },
        }


# -- the world ---------------------------------------------------------------------------------
@dataclass
class World:
    data: InteractionData
    past: InteractionData  # the ratings before the time split (replayed as history)
    user_ids: list[str]  # registry index → external id
    item_ids: list[str]
    taste: np.ndarray  # (U, I) true ratings (the held-out model)
    base: np.ndarray  # (U, I) base ranker scores
    popularity: np.ndarray  # (I,) past rating counts
    seen: list[set[int]]  # per user index: items rated in the past
    users: np.ndarray  # the simulated user indices
    valid_items: np.ndarray  # (I,) bool: items in the catalog (registry rows may be others')

    def attraction(self, user: int, items: np.ndarray, center: float, scale: float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-scale * (self.taste[user, items] - center)))


def examination(k: int) -> np.ndarray:
    """(k,) probability that a user looks at each position: 1 / log2(p + 2)."""
    return 1.0 / np.log2(np.arange(k) + 2.0)


def split_by_time(data: InteractionData, fraction: float) -> InteractionData:
    ordered = sorted(data.ratings, key=lambda r: r.ts)
    return replace(data, ratings=ordered[: int(len(ordered) * fraction)])


def build_world(
    data: InteractionData,
    ids: IdRegistry,
    config: SimulationConfig,
    on_stage: Callable[[str], None] = lambda _: None,
) -> World:
    """Train the base ranker on the past and the taste model on everything."""
    from streamrec.trainer.loop import fit
    from streamrec.trainer.models import build_model, train_config

    past_data = split_by_time(data, config.train_fraction)
    everything = build(data, ids)
    past = build(past_data, ids)
    on_stage("training the base ranker (BPR) on the past")
    base = build_model("bpr", past, seed=config.seed)
    fit(base, past, None, train_config("bpr", epochs=config.base_epochs, seed=config.seed))
    on_stage("training the taste model (explicit MF) on all ratings")
    oracle = build_model("mf", everything, seed=config.seed)
    fit(oracle, everything, None, train_config("mf", epochs=config.oracle_epochs, seed=config.seed))
    with torch.no_grad():
        every_user = Query(torch.arange(everything.n_users))
        taste = oracle.full_scores(every_user).clamp(0.5, 5.0).numpy()  # (U, I)
        base_scores = base.full_scores(every_user).numpy()  # (U, I)
    seen: list[set[int]] = [set() for _ in range(everything.n_users)]
    for u, i in zip(past.users.tolist(), past.items.tolist(), strict=True):
        seen[u].add(i)
    counts = np.bincount(past.users, minlength=everything.n_users)
    valid = np.zeros(everything.n_items, np.bool_)
    valid[everything.items] = True
    return World(
        data=data,
        past=past_data,
        user_ids=ids.external_ids(IdKind.USER),
        item_ids=ids.external_ids(IdKind.ITEM),
        taste=taste,
        base=base_scores,
        popularity=np.bincount(past.items, minlength=everything.n_items).astype(np.float64),
        seen=seen,
        users=np.flatnonzero(counts >= config.min_history),
        valid_items=valid,
    )


# -- policies without learning -----------------------------------------------------------------
def _top(scores: np.ndarray, n: int, exclude: set[int], valid: np.ndarray) -> np.ndarray:
    """The indices of the ``n`` best ``scores`` among valid items not in ``exclude``."""
    masked = np.where(valid, scores, -np.inf)
    if exclude:
        masked[list(exclude)] = -np.inf
    n = min(n, len(masked))
    top = np.argpartition(-masked, n - 1)[:n]
    top = top[np.argsort(-masked[top], kind="stable")]
    return top[np.isfinite(masked[top])]


@dataclass
class Episode:
    """The shared script of a run: who is served and the dice, the same for every policy."""

    users: np.ndarray  # (slates,) user index per slate
    dice: np.ndarray  # (slates, k) uniforms: a click where dice < P(click)

    @classmethod
    def draw(cls, world: World, config: SimulationConfig) -> Episode:
        rng = np.random.default_rng(config.seed)
        return cls(rng.choice(world.users, config.slates), rng.random((config.slates, config.k)))


class Tally:
    """Counts one policy's clicks and samples its cumulative CTR curve."""

    def __init__(self, policy: str, config: SimulationConfig) -> None:
        self.result = PolicyResult(policy)
        self._every = max(1, config.slates // config.checkpoints)
        self._started = time.perf_counter()

    def add(self, shown: int, clicks: int) -> None:
        r = self.result
        r.slates += 1
        r.shown += shown
        r.clicks += clicks
        if r.slates % self._every == 0:
            r.curve.append((r.slates, r.ctr))

    def done(self) -> PolicyResult:
        self.result.seconds = time.perf_counter() - self._started
        if not self.result.curve or self.result.curve[-1][0] != self.result.slates:
            self.result.curve.append((self.result.slates, self.result.ctr))
        return self.result


def clicks_on(
    world: World, config: SimulationConfig, user: int, slate: np.ndarray, dice: np.ndarray
) -> np.ndarray:
    """(len(slate),) bool: which positions the user clicks."""
    p = examination(len(slate)) * world.attraction(
        user, slate, config.attract_center, config.attract_scale
    )
    return dice[: len(slate)] < p


def run_static(
    world: World, config: SimulationConfig, episode: Episode, policy: str
) -> PolicyResult:
    rng = np.random.default_rng(config.seed + 1)
    valid = world.valid_items
    scores: Callable[[int], np.ndarray] = {
        "random": lambda _u: rng.random(len(valid)),
        "popular": lambda _u: world.popularity,
        "base": lambda u: world.base[u],
    }[policy]
    tally = Tally(policy, config)
    clicked: dict[int, set[int]] = {}
    for step, user in enumerate(episode.users.tolist()):
        exclude = world.seen[user] | clicked.get(user, set())
        slate = _top(scores(user), config.k, exclude, valid)
        hits = clicks_on(world, config, user, slate, episode.dice[step])
        clicked.setdefault(user, set()).update(slate[hits].tolist())
        tally.add(len(slate), int(hits.sum()))
    return tally.done()


# -- the online loop ---------------------------------------------------------------------------
def simulation_settings(var_dir: Path, config: SimulationConfig) -> Settings:
    """Embedded services of its own under ``var_dir``, and the learner tuned to simulated time."""
    return Settings(
        _env_file=None,
        kafka_bootstrap="embedded",
        redis_url="embedded",
        qdrant_url="embedded",
        database_url="",
        var_dir=var_dir,
        log_level="WARNING",
        rl_exploration=config.exploration,
        rl_epsilon=config.epsilon,
        rl_temperature=config.temperature,
        rl_feedback_window_seconds=config.window_s,
        rl_train_every=config.train_every,
        rl_snapshot_every_updates=config.snapshot_every_updates,
        rl_snapshot_seconds=86_400.0,  # by updates only: wall time means nothing here
    )


async def _wait_for(predicate: Callable[[], Any], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the simulation waited {timeout:.0f} s for the consumers")
        await asyncio.sleep(0.02)


class OnlineLoop:
    """The ``dqn`` policy: serve, publish, let the consumers and the learner work."""

    def __init__(self, stores: Stores, world: World, config: SimulationConfig) -> None:
        from streamrec.consumers.app import build_consumer_broker
        from streamrec.core.metrics import Metrics
        from streamrec.producers.publisher import EventPublisher
        from streamrec.schemas.topics import ConsumerGroup
        from streamrec.trainer.online import LearnerConfig, OnlineLearner
        from streamrec.trainer.policy import ActiveModels, RLServer
        from streamrec.trainer.rl import Exploration

        settings, services = stores.settings, stores.services
        self.services, self.world, self.config = services, world, config
        self.registry = stores.models
        models = ActiveModels(self.registry, check_every_s=0.0)  # every snapshot at once
        learning = replace(LearnerConfig.from_settings(settings), seed=config.seed)
        self.learner = OnlineLearner(models, self.registry, services.ids, learning)
        self.groups = [ConsumerGroup.FEATURES.value, ConsumerGroup.ONLINE_RL.value]
        self.broker = build_consumer_broker(
            stores, Metrics(), [ConsumerGroup(g) for g in self.groups], learner=self.learner
        )
        self.publisher = EventPublisher(services.kafka_bootstrap, client_id="streamrec-simulate")
        self.features = stores.features
        exploration = Exploration(config.exploration, config.epsilon, config.temperature)  # type: ignore[arg-type]
        self.server = RLServer(models, services.ids, exploration, seed=config.seed)
        self.index = {item: i for i, item in enumerate(world.item_ids)}
        # Simulated time starts an hour after the past ends (computed once: it is read per slate).
        self.start_ts = max(r.ts for r in world.past.ratings) + 3600.0

    async def start(self, on_stage: Callable[[str], None]) -> None:
        from streamrec.producers.replay import replay
        from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel

        on_stage("training Doc2Vec on the catalog")
        d2v = await asyncio.to_thread(
            Doc2VecModel(Doc2VecConfig(seed=self.config.seed)).fit,
            self.world.data.items,
            self.services.ids,
        )
        self.registry.register(
            "doc2vec",
            d2v,
            {"items": len(self.world.data.items)},
            n_items=d2v.config.n_items,
            activate=True,
        )
        await self.broker.start()
        await self.publisher.start()
        on_stage(f"replaying {len(self.world.past.ratings):,} past ratings through Kafka")
        await replay(self.world.past, self.publisher)
        await self.sync()

    async def stop(self) -> None:
        await self.publisher.stop()
        await self.broker.stop()
        await self.learner.wait_idle()

    async def sync(self) -> None:
        """Until both groups have consumed everything and the learner owes no update."""
        from streamrec.core.lag import consumer_lag

        bootstrap = self.services.kafka_bootstrap

        async def consumed() -> bool:
            report = await consumer_lag(bootstrap, groups=self.groups, with_seconds=False)
            return report.total_lag == 0

        await _wait_for(consumed)
        self.learner.schedule_training()
        await self.learner.wait_idle()

    async def serve(
        self, step: int, user: int, exclude: set[int], dice: np.ndarray
    ) -> tuple[int, np.ndarray]:
        """Serve one slate and publish it with its clicks; (shown, clicked item indices)."""
        from streamrec.trainer.rl import STATE_RECENT_ITEMS

        world, config = self.world, self.config
        user_id = world.user_ids[user]
        candidates = _top(world.base[user], config.depth, exclude, world.valid_items)
        recent = await self.features.recent_items(user_id, STATE_RECENT_ITEMS)
        stats = await self.features.user_stats(user_id)
        ranked = self.server.rerank(
            [world.item_ids[i] for i in candidates], recent, stats, config.k
        )
        shown = [item for item, _ in ranked.items]
        slate = np.asarray([self.index[i] for i in shown], np.int64)
        hits = clicks_on(world, config, user, slate, dice)
        at = self.start_ts + step * config.seconds_per_slate
        request_id = uuid.uuid4().hex
        model = "bpr+dqn" if ranked.dqn_version is not None else "bpr"
        events: list[Any] = [
            ImpressionEvent(
                user_id=user_id,
                request_id=request_id,
                item_ids=shown,
                model=model,
                variant=VARIANT,
                ts=_time(at),
                policy=ranked.policy_log(),
            )
        ]
        for position in np.flatnonzero(hits).tolist():
            clicked_at = _time(at + 0.1 * (position + 1))  # read down the list
            events.append(
                ClickEvent(
                    user_id=user_id,
                    item_id=shown[position],
                    request_id=request_id,
                    position=position,
                    model=model,
                    variant=VARIANT,
                    ts=clicked_at,
                )
            )
        await self.publisher.publish_many(events)
        return len(slate), slate[hits]


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def run_dqn(
    stores: Stores,
    world: World,
    config: SimulationConfig,
    episode: Episode,
    on_stage: Callable[[str], None],
) -> PolicyResult:
    loop = OnlineLoop(stores, world, config)
    await loop.start(on_stage)
    on_stage(f"serving {config.slates:,} slates with the DQN re-ranker (online learning)")
    tally = Tally("dqn", config)
    clicked: dict[int, set[int]] = {}
    try:
        for step, user in enumerate(episode.users.tolist()):
            exclude = world.seen[user] | clicked.get(user, set())
            shown, hit_items = await loop.serve(step, user, exclude, episode.dice[step])
            clicked.setdefault(user, set()).update(hit_items.tolist())
            tally.add(shown, len(hit_items))
            if (step + 1) % config.sync_every == 0:
                await loop.sync()
        await loop.sync()
    finally:
        await loop.stop()
    result = tally.done()
    learner = loop.learner
    result.extra = {
        "updates": learner.learner.steps if learner.learner else 0,
        "transitions": learner.transitions,
        "snapshots": len(learner.snapshots),
        "skipped": dict(learner.joiner.skipped) if learner.joiner else {},
    }
    return result


# -- running it --------------------------------------------------------------------------------
def run_simulation(
    data: InteractionData,
    config: SimulationConfig,
    var_dir: Path | None = None,
    on_stage: Callable[[str], None] = lambda _: None,
) -> SimulationReport:
    """Build the world from ``data`` and run every policy of ``config`` in it. Services are
    embedded ones of its own (under ``var_dir``, else a temporary directory)."""
    if var_dir is not None:
        return asyncio.run(_run(data, config, Path(var_dir), on_stage))
    with tempfile.TemporaryDirectory(prefix="streamrec-sim-") as tmp:
        return asyncio.run(_run(data, config, Path(tmp), on_stage))


async def _run(
    data: InteractionData,
    config: SimulationConfig,
    var_dir: Path,
    on_stage: Callable[[str], None],
) -> SimulationReport:
    from streamrec.stores.factory import open_stores

    started = time.perf_counter()
    settings = simulation_settings(var_dir, config)
    async with open_stores(settings) as stores:
        world = await asyncio.to_thread(build_world, data, stores.ids, config, on_stage)
        if len(world.users) == 0:
            raise InvalidInput(f"no user has {config.min_history} past ratings to simulate")
        episode = Episode.draw(world, config)
        setup = time.perf_counter() - started
        results: dict[str, PolicyResult] = {}
        for policy in config.policies:
            if policy == "dqn":
                results[policy] = await run_dqn(stores, world, config, episode, on_stage)
            else:
                on_stage(f"serving {config.slates:,} slates with {policy}")
                results[policy] = run_static(world, config, episode, policy)
    return SimulationReport(
        config, data.name, len(world.users), int(world.valid_items.sum()), results, setup
    )


def plot_curves(report: SimulationReport, path: Path) -> Path:
    """Cumulative CTR against slates served, one line per policy, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; a file only
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name, result in report.results.items():
        xs, ys = zip(*result.curve, strict=True) if result.curve else ((), ())
        ax.plot(xs, ys, label=f"{name} ({result.ctr:.3f})", linewidth=2 if name == "dqn" else 1)
    ax.set_xlabel("slates served")
    ax.set_ylabel("cumulative CTR")
    ax.set_title(
        f"simulated users on {report.dataset} (k={report.config.k}, seed {report.config.seed})"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
