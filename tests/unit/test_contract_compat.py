"""``incompatibilities`` finds every kind of breaking change and lets compatible ones pass.

Each test defines the old and the new version of a small model, both titled ``Thing`` as
two versions of one event would be, and compares their serialisation schemas.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts.compat import incompatibilities

THING = ConfigDict(title="Thing")


def schema(model: type[BaseModel], subject: str = "liteclaw.test.thing") -> dict[str, Any]:
    return {"x-subject": subject, **model.model_json_schema(mode="serialization")}


def problems(old: type[BaseModel], new: type[BaseModel]) -> list[str]:
    return incompatibilities(schema(old), schema(new))


def test_identical_schemas_are_compatible() -> None:
    class V1(BaseModel):
        model_config = THING
        name: str
        tags: list[str] = []

    assert problems(V1, V1) == []


def test_adding_an_optional_field_is_compatible() -> None:
    class V1(BaseModel):
        model_config = THING
        name: str

    class V2(BaseModel):
        model_config = THING
        name: str
        nickname: str | None = None
        retries: int = 0

    assert problems(V1, V2) == []


def test_removed_field_is_reported_with_event_and_field() -> None:
    class V1(BaseModel):
        model_config = THING
        name: str
        age: int = 0

    class V2(BaseModel):
        model_config = THING
        name: str

    assert problems(V1, V2) == ["Thing: field 'age' was removed"]


def test_optional_field_becoming_required_is_reported() -> None:
    class V1(BaseModel):
        model_config = THING
        age: int = 0

    class V2(BaseModel):
        model_config = THING
        age: int

    assert problems(V1, V2) == ["Thing: field 'age' is newly required"]


def test_new_required_field_is_reported() -> None:
    class V1(BaseModel):
        model_config = THING
        name: str

    class V2(BaseModel):
        model_config = THING
        name: str
        age: int

    assert problems(V1, V2) == ["Thing: field 'age' was added as a required field"]


def test_changed_scalar_type_is_reported() -> None:
    class V1(BaseModel):
        model_config = THING
        count: int

    class V2(BaseModel):
        model_config = THING
        count: str

    assert problems(V1, V2) == ["Thing: field 'count' changed type from integer to string"]


def test_widening_to_nullable_is_reported_because_old_consumers_reject_null() -> None:
    class V1(BaseModel):
        model_config = THING
        count: int

    class V2(BaseModel):
        model_config = THING
        count: int | None

    assert problems(V1, V2) == ["Thing: field 'count' changed type from integer to integer | null"]


def test_changed_string_format_is_reported() -> None:
    class V1(BaseModel):
        model_config = THING
        job_id: UUID

    class V2(BaseModel):
        model_config = THING
        job_id: str

    assert problems(V1, V2) == ["Thing: field 'job_id' changed type from string (uuid) to string"]


def test_changed_field_of_a_referenced_model_is_found_through_defs() -> None:
    class InnerV1(BaseModel):
        port: int

    class InnerV2(BaseModel):
        port: str

    class V1(BaseModel):
        model_config = THING
        inner: InnerV1

    class V2(BaseModel):
        model_config = THING
        inner: InnerV2

    assert "$ref" in str(schema(V1)["properties"]["inner"])
    assert problems(V1, V2) == ["Thing: field 'inner.port' changed type from integer to string"]


def test_renaming_a_referenced_model_with_the_same_shape_is_compatible() -> None:
    class Address(BaseModel):
        city: str

    class Location(BaseModel):
        city: str

    class V1(BaseModel):
        model_config = THING
        where: Address

    class V2(BaseModel):
        model_config = THING
        where: Location

    assert problems(V1, V2) == []


def test_changed_array_item_type_is_reported() -> None:
    class V1(BaseModel):
        model_config = THING
        counts: list[int]

    class V2(BaseModel):
        model_config = THING
        counts: list[str]

    assert problems(V1, V2) == ["Thing: field 'counts[]' changed type from integer to string"]


def test_removed_literal_value_is_reported() -> None:
    class V1(BaseModel):
        model_config = THING
        kind: Literal["webhook", "telegram"]

    class V2(BaseModel):
        model_config = THING
        kind: Literal["webhook"]

    assert problems(V1, V2) == ["Thing: field 'kind' no longer allows value \"telegram\""]


def test_removed_enum_value_is_reported() -> None:
    class ColourV1(Enum):
        RED = "red"
        BLUE = "blue"

    class ColourV2(Enum):
        RED = "red"

    class V1(BaseModel):
        model_config = THING
        colour: ColourV1

    class V2(BaseModel):
        model_config = THING
        colour: ColourV2

    assert problems(V1, V2) == ["Thing: field 'colour' no longer allows value \"blue\""]


def test_added_literal_value_is_reported_because_old_consumers_reject_it() -> None:
    class V1(BaseModel):
        model_config = THING
        kind: Literal["webhook"]

    class V2(BaseModel):
        model_config = THING
        kind: Literal["webhook", "email"]

    assert problems(V1, V2) == [
        "Thing: field 'kind' allows new value \"email\", which old consumers reject"
    ]


def test_changed_type_const_is_reported() -> None:
    class V1(BaseModel):
        model_config = THING
        type: Literal["Thing"] = "Thing"

    class V2(BaseModel):
        model_config = THING
        type: Literal["ThingV2"] = "ThingV2"

    assert problems(V1, V2) == ['Thing: field \'type\' const changed from "Thing" to "ThingV2"']


def test_removed_branch_of_a_discriminated_union_is_reported() -> None:
    class Webhook(BaseModel):
        type: Literal["webhook"] = "webhook"
        url: str

    class Telegram(BaseModel):
        type: Literal["telegram"] = "telegram"
        chat_id: str

    class V1(BaseModel):
        model_config = THING
        channel: Annotated[Webhook | Telegram, Field(discriminator="type")]

    class V2(BaseModel):
        model_config = THING
        channel: Webhook

    assert problems(V1, V2) == [
        "Thing: field 'channel' changed type from Webhook | Telegram to Webhook"
    ]


def test_changed_field_inside_a_union_branch_names_the_branch() -> None:
    class WebhookV1(BaseModel):
        model_config = ConfigDict(title="Webhook")
        type: Literal["webhook"] = "webhook"
        url: str

    class WebhookV2(BaseModel):
        model_config = ConfigDict(title="Webhook")
        type: Literal["webhook"] = "webhook"

    class Telegram(BaseModel):
        type: Literal["telegram"] = "telegram"
        chat_id: str

    class V1(BaseModel):
        model_config = THING
        channel: Annotated[WebhookV1 | Telegram, Field(discriminator="type")]

    class V2(BaseModel):
        model_config = THING
        channel: Annotated[WebhookV2 | Telegram, Field(discriminator="type")]

    assert problems(V1, V2) == ["Thing: field 'channel[Webhook].url' was removed"]


def test_added_optional_field_is_reported_when_the_old_schema_forbids_extras() -> None:
    class V1(BaseModel):
        model_config = ConfigDict(title="Thing", extra="forbid")
        name: str

    class V2(BaseModel):
        model_config = ConfigDict(title="Thing", extra="forbid")
        name: str
        nickname: str | None = None

    assert problems(V1, V2) == [
        "Thing: field 'nickname' was added but the old schema forbids unknown fields"
    ]


def test_forbidding_extras_is_reported() -> None:
    class V1(BaseModel):
        model_config = ConfigDict(title="Thing", extra="ignore")
        name: str

    class V2(BaseModel):
        model_config = ConfigDict(title="Thing", extra="forbid")
        name: str

    assert problems(V1, V2) == ["Thing: the event now forbids unknown fields"]


def test_changed_subject_is_reported() -> None:
    class V1(BaseModel):
        model_config = THING
        name: str

    old, new = schema(V1, "liteclaw.a.thing"), schema(V1, "liteclaw.b.thing")
    assert incompatibilities(old, new) == [
        "Thing: subject changed from 'liteclaw.a.thing' to 'liteclaw.b.thing'"
    ]


class Node(BaseModel):
    model_config = THING
    name: str
    children: list[Node] = []


class NodeV2(BaseModel):
    model_config = THING
    name: int
    children: list[NodeV2] = []


def test_recursive_models_terminate_and_changes_inside_them_are_found() -> None:
    assert problems(Node, Node) == []
    assert problems(Node, NodeV2) == ["Thing: field 'name' changed type from string to integer"]
