"""Experiments: impressions, clicks and CTR with a 95% Wilson interval per variant.

Read from the per-variant counters the features consumer keeps in Redis; an experiment is the
variant labels ``<name>`` and ``<name>:<arm>`` (see ``api.experiment_stats``). Reads: no key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from streamrec.api.deps import RuntimeDep
from streamrec.api.experiment_stats import read_experiment, read_experiments
from streamrec.api.responses import error_responses
from streamrec.schemas.api import Experiment, ExperimentList

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

ExperimentName = Annotated[
    str, Path(min_length=1, max_length=64, description="The part of the variant labels before ':'")
]


@router.get("", responses=error_responses(503))
async def list_experiments(runtime: RuntimeDep) -> ExperimentList:
    """Every experiment that has impressions or clicks, by name."""
    return await read_experiments(runtime.services.redis)


@router.get(
    "/{name}",
    responses=error_responses(422, 503, described={404: "Unknown experiment"}),
)
async def get_experiment(name: ExperimentName, runtime: RuntimeDep) -> Experiment:
    """Per variant (and per serving model within it): impressions, clicks, CTR and its 95%
    Wilson interval. Impressions count lists served; clicks count click events that carry
    the ``model`` (and ``variant``) of the list they came from."""
    return await read_experiment(runtime.services.redis, name)
