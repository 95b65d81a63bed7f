"""One name per model: the table every surface derives its names from, and its promises."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from streamrec.schemas.api import (
    RecommendationModel,
    TrainableModel,
    TrainingJobRequest,
    VectorModel,
)
from streamrec.schemas.models import (
    ALIASES,
    MODELS,
    RECOMMENDERS,
    RETRAINABLE,
    TRAINABLE,
    VECTOR_MODELS,
    ModelName,
    canonical,
    choices,
    resolve,
)
from streamrec.trainer.models import MODELS as TORCH_MODELS


def test_every_model_has_one_row_named_as_its_key() -> None:
    assert list(MODELS) == list(ModelName)
    assert all(kind.name is name for name, kind in MODELS.items())


def test_a_model_that_trains_is_served() -> None:
    for name in TRAINABLE:
        kind = MODELS[name]
        assert kind.vectors and kind.recommends and kind.collection, name
    assert set(RETRAINABLE) <= set(TRAINABLE)
    assert set(VECTOR_MODELS) <= set(RECOMMENDERS)


def test_what_trains_is_what_the_trainer_builds() -> None:
    # The torch models plus Doc2Vec: a row without a trainer (or the reverse) fails here.
    assert {n.value for n in TRAINABLE} == {*TORCH_MODELS, "doc2vec"}
    assert {n.value for n in RETRAINABLE} == set(TORCH_MODELS)


def test_collections_are_named_by_the_model_but_doc2vec_keeps_content() -> None:
    keys = {name: MODELS[name].collection for name in VECTOR_MODELS}
    assert keys[ModelName.DOC2VEC] == "content"  # items_content published before still serves
    assert all(key == name.value for name, key in keys.items() if name != ModelName.DOC2VEC)
    assert len(set(keys.values())) == len(keys)
    assert MODELS[ModelName.DOC2VEC].distance == "cosine" and MODELS[ModelName.MF].distance == "dot"


def test_former_names_resolve_and_never_shadow_a_name() -> None:
    assert ALIASES == {"content": ModelName.DOC2VEC}
    assert not set(ALIASES) & {n.value for n in ModelName}
    assert resolve("content", RECOMMENDERS, "model=") is ModelName.DOC2VEC
    assert canonical("content") == "doc2vec" and canonical("anything") == "anything"
    assert (
        choices([ModelName.MF, ModelName.DOC2VEC])
        == "'mf', 'doc2vec' (also 'content' for 'doc2vec')"
    )


@pytest.mark.parametrize(
    ("value", "allowed", "says"),
    [
        ("dqn", RECOMMENDERS, "dqn is a re-ranker"),
        ("dqn", VECTOR_MODELS, "use rerank=dqn"),
        ("popular", VECTOR_MODELS, "popular is served from the live counts in Redis"),
        ("doc2vec", RETRAINABLE, "train it with `streamrec train --model doc2vec"),
        ("nope", TRAINABLE, "unknown model 'nope'"),
    ],
)
def test_a_name_not_taken_says_what_to_use_instead(
    value: str, allowed: tuple[ModelName, ...], says: str
) -> None:
    with pytest.raises(ValueError, match="--model takes '") as refused:
        resolve(value, allowed, "--model")
    assert says in str(refused.value)


def test_api_types_take_every_name_of_their_surface_and_former_names() -> None:
    for annotation, names in [
        (RecommendationModel, RECOMMENDERS),
        (VectorModel, VECTOR_MODELS),
        (TrainableModel, TRAINABLE),
    ]:
        adapter = TypeAdapter(annotation)
        assert [adapter.validate_python(n.value) for n in names] == list(names)
        assert adapter.validate_python("content") is ModelName.DOC2VEC
        assert adapter.dump_python(ModelName.DOC2VEC, mode="json") == "doc2vec"
        accepted = adapter.json_schema()["enum"]
        assert accepted == [n.value for n in names] + ["content"]
        assert adapter.json_schema(mode="serialization")["enum"] == [n.value for n in names]
    with pytest.raises(ValidationError, match="use rerank=dqn"):
        TypeAdapter(RecommendationModel).validate_python("dqn")
    with pytest.raises(ValidationError, match="a model name"):
        TypeAdapter(VectorModel).validate_python(3)
    assert TrainingJobRequest(model="content", data="archive").model is ModelName.DOC2VEC
