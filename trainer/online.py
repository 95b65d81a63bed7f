"""Online reinforcement learning from the live stream: the Dueling DQN learns from logged
slates and the feedback on them.

* ``FeedbackJoiner`` (pure, no I/O) joins each logged slate (an impression with a policy log,
  see ``schemas.events.PolicyLog``) with the clicks and ratings on its items that follow within
  ``window_s`` of event time, and turns it into one transition per shown item: reward 1 for a
  click, the rating scaled to [-1, 1] for a rating (it supersedes a click on the same item), 0
  for an item left alone. The next state is the user's next logged slate when one arrives
  within the window, else there is nothing to bootstrap from. Open slates are bounded (the
  oldest close early) and so is feedback that arrives before its slate (topics are fetched
  apart, so a click can be read before its impression).
* ``OnlineLearner`` holds the replay buffer and the ``DQNLearner``, trains in a worker thread
  (never on the event loop), ``train_every`` new transitions per gradient step with a bounded
  backlog, within a CPU budget (``train_share``: after each step it rests, so that the
  consumer groups sharing its process, and its GIL, are not starved while it works off a
  backlog), and publishes a policy snapshot to the model registry (activated) every
  ``snapshot_every_updates`` updates or ``snapshot_seconds``: the API and the simulator pick it
  up on a later request (``trainer.policy.ActiveModels``), without a restart.

The ``streamrec-online-rl`` consumer group (``consumers/online_rl.py``) feeds the learner the
events it reads; the simulator (``apps/simulate.py``) runs the same learner.

The state a transition is trained on is the one logged with the slate, i.e. exactly what the
serving policy acted on (``trainer.policy.ContentRows.state``). Impressions without a policy log
(lists not served through ``rerank=dqn``) carry no state and are skipped, as are slates built
on another Doc2Vec version than the learner's.

Delivery: the learner's open slates and replay buffer live in memory. After a crash the group
resumes from its committed offsets, so slates that were open are lost, never double-counted
in a snapshot already published; for a learner that samples a replay buffer this costs a few
seconds of experience, which is the trade the design makes for not writing every transition
to a store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from streamrec.core.errors import NotFound
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.core.settings import Settings
from streamrec.schemas.events import ClickEvent, Event, ImpressionEvent, RatingEvent
from streamrec.schemas.topics import ConsumerGroup
from streamrec.stores.model_registry import ModelRegistry
from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
from streamrec.trainer.policy import DOC2VEC, DQN, ActiveModels, Loaded
from streamrec.trainer.rl import DQNLearner, ReplayBuffer, Transition, reward_from_rating, state_dim

# Recorded in each snapshot's data window: the learner prunes only the versions it published.
SOURCE = ConsumerGroup.ONLINE_RL.value
log = logging.getLogger(__name__)
CLICK_REWARD = 1.0
MAX_BACKLOG_UPDATES = 1000  # gradient steps owed beyond this are dropped (bounded lag)


# -- joining slates with their feedback (pure) --------------------------------------------------
@dataclass
class OpenSlate:
    """A logged slate waiting for feedback."""

    user_id: str
    request_id: str
    ts: float  # event time, seconds
    state: np.ndarray  # (S,) logged with the slate
    items: list[str]  # shown items with a content vector, in position order
    indices: list[int]  # their id-registry indices
    rewards: dict[str, float] = field(default_factory=dict)
    rated: set[str] = field(default_factory=set)
    next_state: np.ndarray | None = None
    next_indices: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Feedback:
    user_id: str
    item_id: str
    ts: float
    request_id: str | None
    reward: float
    is_rating: bool


ItemLookup = Callable[[Sequence[str]], Mapping[str, int]]


class FeedbackJoiner:
    """Impressions + clicks + ratings → transitions, by event time (see the module doc)."""

    def __init__(
        self,
        item_index: ItemLookup,
        content_version: int,
        state_size: int,
        window_s: float = 30.0,
        max_open: int = 100_000,
        max_candidates: int = 50,
    ) -> None:
        self._item_index = item_index
        self.content_version = content_version
        self._state_size = state_size
        self._window = window_s
        self._max_open = max_open
        self._max_candidates = max_candidates
        self._open: OrderedDict[str, OpenSlate] = OrderedDict()  # request id → slate
        self._by_user: dict[str, list[str]] = {}  # user → open request ids, oldest first
        # Feedback read before its slate, per user (least recently added first), bounded.
        self._early: OrderedDict[str, list[Feedback]] = OrderedDict()
        self._n_early = 0
        self._watermark = float("-inf")  # the newest event time seen
        self._closed_early: list[Transition] = []  # evicted by the bound, returned next
        self.skipped: Counter[str] = Counter()

    @property
    def open_slates(self) -> int:
        return len(self._open)

    def observe(self, events: Iterable[Event]) -> list[Transition]:
        """Join ``events`` (any order; they are taken by event time) and return the
        transitions of every slate whose feedback window has closed."""
        for event in sorted(events, key=lambda e: e.ts):
            ts = event.ts.timestamp()
            self._watermark = max(self._watermark, ts)
            if isinstance(event, ImpressionEvent):
                self._open_slate(event, ts)
            elif isinstance(event, ClickEvent | RatingEvent):
                self._feedback(_feedback_of(event, ts))
        return self._close_due()

    def flush(self) -> list[Transition]:
        """Close every open slate now (shutdown, tests)."""
        closed = [*self._closed_early]
        self._closed_early.clear()
        for request_id in list(self._open):
            closed.extend(self._close(request_id))
        self._early.clear()
        self._n_early = 0
        return closed

    # -- slates -------------------------------------------------------------------------------
    def _open_slate(self, event: ImpressionEvent, ts: float) -> None:
        policy = event.policy
        if policy is None:
            self.skipped["no_policy_log"] += 1
            return
        if policy.content_version != self.content_version:
            self.skipped["other_content_version"] += 1
            return
        if event.request_id in self._open:  # a redelivered impression
            self.skipped["duplicate_request_id"] += 1
            return
        if len(policy.state) != self._state_size:
            self.skipped["bad_state_size"] += 1
            return
        shown = list(dict.fromkeys(event.item_ids))[: self._max_candidates]
        index = self._item_index(shown)
        items = [i for i in shown if i in index]
        if not items:
            self.skipped["no_content_vectors"] += 1
            return
        state = np.asarray(policy.state, np.float32)
        previous = self._latest_open(event.user_id)
        if previous is not None and previous.next_state is None and previous.ts <= ts:
            previous.next_state, previous.next_indices = state, [index[i] for i in items]
        slate = OpenSlate(
            event.user_id, event.request_id, ts, state, items, [index[i] for i in items]
        )
        self._open[event.request_id] = slate
        self._by_user.setdefault(event.user_id, []).append(event.request_id)
        self._apply_early(slate)
        while len(self._open) > self._max_open:  # bounded: the oldest closes early
            self._closed_early.extend(self._close(next(iter(self._open))))
            self.skipped["closed_early"] += 1

    def _latest_open(self, user_id: str) -> OpenSlate | None:
        ids = self._by_user.get(user_id)
        return self._open[ids[-1]] if ids else None

    # -- feedback -----------------------------------------------------------------------------
    def _feedback(self, fb: Feedback) -> None:
        slate = self._match(fb)
        if slate is not None:
            _credit(slate, fb)
            return
        waiting = self._early.setdefault(fb.user_id, [])
        self._drop_expired(waiting, self._watermark - self._window)
        waiting.append(fb)  # its slate may be on its way
        self._early.move_to_end(fb.user_id)
        self._n_early += 1
        while self._n_early > self._max_open:
            _, dropped = self._early.popitem(last=False)
            self._n_early -= len(dropped)
            self.skipped["feedback_without_slate"] += len(dropped)

    def _match(self, fb: Feedback) -> OpenSlate | None:
        if fb.request_id is not None:
            slate = self._open.get(fb.request_id)
            ok = slate is not None and slate.user_id == fb.user_id and fb.item_id in slate.items
            return slate if ok else None
        # No request id (ratings, or an app that did not pass it on): the newest open slate of
        # the user, served before the feedback, that showed the item.
        for request_id in reversed(self._by_user.get(fb.user_id, [])):
            slate = self._open[request_id]
            if slate.ts <= fb.ts and fb.item_id in slate.items:
                return slate
        return None

    def _apply_early(self, slate: OpenSlate) -> None:
        waiting = self._early.get(slate.user_id)
        if not waiting:
            return
        kept = []
        for fb in waiting:
            in_window = slate.ts <= fb.ts <= slate.ts + self._window
            if in_window and self._match(fb) is slate:
                _credit(slate, fb)
            else:
                kept.append(fb)
        self._n_early -= len(waiting) - len(kept)
        if kept:
            self._early[slate.user_id] = kept
        else:
            del self._early[slate.user_id]

    # -- closing ------------------------------------------------------------------------------
    def _close_due(self) -> list[Transition]:
        done = [*self._closed_early]
        self._closed_early.clear()
        for request_id, slate in list(self._open.items()):
            if slate.ts + self._window > self._watermark:
                break  # opened in event-time order (near enough): the rest are younger
            done.extend(self._close(request_id))
        if self._early:
            self._expire_early(self._watermark - self._window)
        return done

    def _expire_early(self, horizon: float) -> None:
        """Drop waiting feedback older than ``horizon``, in amortised constant time per entry:
        users come least recently added first, so the scan stops at the first user with
        feedback still in the window (entries behind it go when their user's turn comes, or
        when that user's list is next added to: ``_drop_expired``)."""
        while self._early:
            user_id, waiting = next(iter(self._early.items()))
            if max(fb.ts for fb in waiting) >= horizon:
                break
            del self._early[user_id]
            self._count_expired(len(waiting))

    def _drop_expired(self, waiting: list[Feedback], horizon: float) -> None:
        """The expired head of one user's waiting list (kept in arrival order)."""
        expired = 0
        while expired < len(waiting) and waiting[expired].ts < horizon:
            expired += 1
        if expired:
            del waiting[:expired]
            self._count_expired(expired)

    def _count_expired(self, n: int) -> None:
        self.skipped["feedback_without_slate"] += n
        self._n_early -= n

    def _close(self, request_id: str) -> list[Transition]:
        slate = self._open.pop(request_id)
        user_open = self._by_user[slate.user_id]
        user_open.remove(request_id)
        if not user_open:
            del self._by_user[slate.user_id]
        next_state = slate.next_state if slate.next_state is not None else slate.state
        return [
            Transition(
                state=slate.state,
                candidates=slate.indices,
                action=position,
                reward=slate.rewards.get(item, 0.0),
                next_state=next_state,
                next_candidates=slate.next_indices,
                done=False,
            )
            for position, item in enumerate(slate.items)
        ]


def _feedback_of(event: ClickEvent | RatingEvent, ts: float) -> Feedback:
    if isinstance(event, ClickEvent):
        return Feedback(event.user_id, event.item_id, ts, event.request_id, CLICK_REWARD, False)
    return Feedback(event.user_id, event.item_id, ts, None, reward_from_rating(event.rating), True)


def _credit(slate: OpenSlate, fb: Feedback) -> None:
    if fb.is_rating:  # an explicit rating says more than the click that led to it
        slate.rewards[fb.item_id] = fb.reward
        slate.rated.add(fb.item_id)
    elif fb.item_id not in slate.rated:
        slate.rewards[fb.item_id] = max(slate.rewards.get(fb.item_id, 0.0), fb.reward)


# -- learning -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearnerConfig:
    window_s: float = 30.0
    max_open: int = 100_000
    max_candidates: int = 50
    replay_capacity: int = 50_000
    train_every: int = 8
    snapshot_every_updates: int = 500
    snapshot_seconds: float = 60.0
    keep_snapshots: int = 20  # the learner's older inactive versions are deleted
    # Share of the wall time the training thread may take (1: no rest): after a gradient step
    # of t seconds it rests t * (1 / train_share - 1).
    train_share: float = 1.0
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> LearnerConfig:
        return cls(
            window_s=settings.rl_feedback_window_seconds,
            max_open=settings.rl_open_impressions,
            max_candidates=settings.rl_max_candidates,
            replay_capacity=settings.rl_replay_capacity,
            train_every=settings.rl_train_every,
            snapshot_every_updates=settings.rl_snapshot_every_updates,
            snapshot_seconds=settings.rl_snapshot_seconds,
            keep_snapshots=settings.rl_keep_snapshots,
            train_share=settings.rl_train_share,
        )


class OnlineLearner:
    """Replay buffer + double-DQN learner fed by the joiner; see the module doc.

    ``observe`` and ``train_due`` block (SQL, torch): callers on an event loop run them in
    threads (``train_due`` through ``schedule_training``).
    They may run at the same time; the buffer and the counters are shared under a lock.
    """

    def __init__(
        self,
        models: ActiveModels,
        registry: ModelRegistry,
        ids: IdRegistry,
        config: LearnerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        rest: Callable[[float], None] = time.sleep,
    ) -> None:
        self._models = models
        self._registry = registry
        self._ids = ids
        self.config = config or LearnerConfig()
        self._clock = clock
        self._rest = rest  # the training thread's pause between steps (``train_share``)
        self._lock = threading.Lock()  # buffer, counters
        self._train_lock = threading.Lock()  # one trainer; held while the content changes
        self.content_version: int | None = None
        self.joiner: FeedbackJoiner | None = None
        self.buffer: ReplayBuffer | None = None
        self.learner: DQNLearner | None = None
        self._table = np.zeros((0, 1), np.float32)
        self.updates_due = 0.0
        self.transitions = 0
        self.dropped_updates = 0
        self.last_loss = float("nan")
        self.snapshots: list[int] = []  # registry versions published, oldest first
        self._since_snapshot = 0
        self._last_snapshot = clock()
        self._training: asyncio.Future[int] | None = None

    @classmethod
    def from_settings(
        cls, registry: ModelRegistry, ids: IdRegistry, settings: Settings
    ) -> OnlineLearner:
        """The learner a consumer process runs: active versions re-read every
        ``model_reload_seconds``, the rest from the ``rl_*`` settings."""
        models = ActiveModels(registry, settings.model_reload_seconds)
        return cls(models, registry, ids, LearnerConfig.from_settings(settings))

    # -- intake (blocking: the caller's thread hop) ---------------------------------------------
    def observe(self, events: Sequence[Event]) -> int:
        """Join ``events`` and push the closed slates' transitions; returns how many."""
        joiner = self._joiner()
        if joiner is None:
            return 0
        transitions = joiner.observe(events)
        self._push(transitions)
        return len(transitions)

    def flush(self) -> int:
        """Close every open slate now and push its transitions."""
        if self.joiner is None:
            return 0
        transitions = self.joiner.flush()
        self._push(transitions)
        return len(transitions)

    def _push(self, transitions: Sequence[Transition]) -> None:
        if not transitions:
            return
        assert self.buffer is not None
        with self._lock:
            for t in transitions:
                self.buffer.push(t)
            self.transitions += len(transitions)
            owed = self.updates_due + len(transitions) / self.config.train_every
            self.updates_due = min(owed, MAX_BACKLOG_UPDATES)
            self.dropped_updates += int(owed - self.updates_due)

    def _joiner(self) -> FeedbackJoiner | None:
        """The joiner for the active Doc2Vec version; None while there is none."""
        try:
            content = self._models.get(DOC2VEC)
        except NotFound:
            return None
        if content.version != self.content_version:
            self._start(content)
        return self.joiner

    def _start(self, content: Loaded) -> None:
        # A new content version changes what every state and candidate means: start a new
        # buffer (old transitions would pair old states with new vectors).
        table = content.model.item_vectors()  # (n_items, D), row = registry index
        size = state_dim(table.shape[1])
        with self._train_lock:
            self._table = table
            self.joiner = FeedbackJoiner(
                self._indices_with_vectors,
                content.version,
                size,
                self.config.window_s,
                self.config.max_open,
                self.config.max_candidates,
            )
            self.buffer = ReplayBuffer(
                self.config.replay_capacity, size, self.config.max_candidates, self.config.seed
            )
            self.learner = DQNLearner(self._initial_policy(table.shape[1]))
            self.content_version = content.version
            self.updates_due = 0.0
        log.info("online learner on doc2vec v%d (%d-d states)", content.version, size)

    def _indices_with_vectors(self, item_ids: Sequence[str]) -> dict[str, int]:
        index = self._ids.lookup(IdKind.ITEM, item_ids)
        rows = len(self._table)
        return {i: r for i, r in index.items() if r < rows and np.any(self._table[r])}

    def _initial_policy(self, item_dim: int) -> DuelingDQN:
        """Continue from the active dqn when it fits these vectors, else a fresh network."""
        try:
            active = self._models.get(DQN)
        except NotFound:
            active = None
        config = DuelingDQNConfig(state_dim=state_dim(item_dim), item_dim=item_dim)
        if active is not None:
            held = active.model.config
            if (held.state_dim, held.item_dim) == (config.state_dim, config.item_dim):
                model = DuelingDQN(held)
                model.load_state_dict(active.model.state_dict())
                return model
        torch.manual_seed(self.config.seed)
        return DuelingDQN(config)

    # -- training (a worker thread) -------------------------------------------------------------
    def train_due(self) -> int:
        """Run the gradient steps owed so far (and publish snapshots when due); returns the
        number of steps."""
        steps = 0
        with self._train_lock:
            learner, buffer = self.learner, self.buffer
            if learner is None or buffer is None:
                return 0
            batch_size = learner.config.batch_size
            while True:
                with self._lock:
                    if self.updates_due < 1 or len(buffer) < batch_size:
                        break
                    self.updates_due -= 1
                    sample = buffer.sample(batch_size)
                began = time.perf_counter()
                self.last_loss = learner.update(sample.to_batch(self._table))
                steps += 1
                self._since_snapshot += 1
                self._snapshot_if_due()
                if self.config.train_share < 1.0:
                    took = time.perf_counter() - began
                    self._rest(took * (1.0 / self.config.train_share - 1.0))
        return steps

    def _snapshot_if_due(self) -> None:
        elapsed = self._clock() - self._last_snapshot
        if self._since_snapshot >= self.config.snapshot_every_updates or (
            self._since_snapshot and elapsed >= self.config.snapshot_seconds
        ):
            self.publish_snapshot()

    def publish_snapshot(self) -> int | None:
        """Register the current policy as the next dqn version and activate it."""
        learner = self.learner
        if learner is None or learner.steps == 0:
            return None
        version = self._registry.register(
            DQN,
            learner.policy(),
            metrics={
                "updates": learner.steps,
                "transitions": self.transitions,
                "loss": self.last_loss,
            },
            n_items=len(self._table),
            data_window={"content_version": self.content_version, "source": SOURCE},
            activate=True,
        ).version
        self.snapshots.append(version)
        self._since_snapshot = 0
        self._last_snapshot = self._clock()
        log.info("published dqn v%d after %d updates", version, learner.steps)
        self._prune_snapshots()
        return version

    def _prune_snapshots(self) -> None:
        """Keep the newest ``keep_snapshots`` of this group's dqn versions: one every few
        seconds would otherwise fill the disk. Versions trained elsewhere, and the active one,
        are never touched."""
        ours = [
            v
            for v in self._registry.list(DQN)
            if v.data_window.get("source") == SOURCE and not v.active
        ]
        for old in ours[: max(0, len(ours) - (self.config.keep_snapshots - 1))]:
            self._registry.delete(DQN, old.version)

    def schedule_training(self) -> None:
        """Start a training pass in a worker thread unless one is running (event loop only)."""
        if self._training is not None and not self._training.done():
            return  # the running pass picks up what is owed now
        self._training = asyncio.ensure_future(asyncio.to_thread(self.train_due))
        self._training.add_done_callback(_log_failure)

    async def wait_idle(self) -> None:
        """Until the running training pass (if any) ends (shutdown, tests)."""
        if self._training is not None:
            await asyncio.shield(self._training)


def _log_failure(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("online training pass failed: %s", future.exception())
