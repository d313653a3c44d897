"""The committed contract schemas are what deployed producers and consumers speak, so the
current models must stay compatible with them. When one of these tests fails, either
make the change compatible (add an optional field instead of changing one) or, if the
break is intended, regenerate with ``python -m shared.contracts.export --allow-breaking``
and deploy every producer and consumer of the event together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from shared.contracts import ALL_EVENTS, SlotDue, export
from shared.contracts.compat import incompatibilities
from shared.contracts.export import (
    ASYNCAPI_PATH,
    CONTRACT_MODELS,
    SCHEMAS_DIR,
    json_schema,
    main,
    schema_path,
)

COMMITTED = sorted(SCHEMAS_DIR.glob("*.json"))
MODELS_BY_NAME: dict[str, type[BaseModel]] = {model.__name__: model for model in CONTRACT_MODELS}


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: path.stem)
def test_current_model_is_compatible_with_committed_schema(path: Path) -> None:
    model = MODELS_BY_NAME.get(path.stem)
    assert model is not None, (
        f"{path.name} is committed but no contract model {path.stem} exists: removing an "
        "event breaks its consumers (delete the file only if none is left)"
    )
    committed = json.loads(path.read_text(encoding="utf-8"))
    assert incompatibilities(committed, json_schema(model)) == []


@pytest.mark.parametrize("model", CONTRACT_MODELS, ids=lambda model: model.__name__)
def test_every_contract_has_a_committed_schema(model: type[BaseModel]) -> None:
    assert schema_path(model).is_file(), f"run `make contracts` to export {model.__name__}"


def test_every_event_is_exported() -> None:
    assert set(ALL_EVENTS) <= set(CONTRACT_MODELS)


def test_committed_asyncapi_names_every_subject() -> None:
    document = json.loads(ASYNCAPI_PATH.read_text(encoding="utf-8"))
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {json_schema(model)["x-subject"] for model in CONTRACT_MODELS} <= addresses


def test_export_check_reports_nothing_to_change(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--check"])
    output = capsys.readouterr().out
    assert status == 0, f"committed contracts are out of date: run `make contracts`\n{output}"
    assert "would change" not in output


# --- the exporter itself, pointed at a scratch directory ------------------------------


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(export, "SCHEMAS_DIR", tmp_path / "schemas")
    monkeypatch.setattr(export, "ASYNCAPI_PATH", tmp_path / "asyncapi.json")
    return tmp_path


def test_check_lists_missing_files_and_writes_nothing(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check"]) == 1
    output = capsys.readouterr().out
    assert "would change" in output and "SlotDue.json" in output and "asyncapi.json" in output
    assert list(scratch.iterdir()) == []


def test_export_writes_stable_files_then_has_nothing_to_do(scratch: Path) -> None:
    assert main([]) == 0
    written = {path: path.read_text(encoding="utf-8") for path in scratch.rglob("*.json")}
    assert len(written) == len(CONTRACT_MODELS) + 1
    assert all(text.endswith("}\n") for text in written.values())
    assert main(["--check"]) == 0
    assert main([]) == 0
    assert {path: path.read_text(encoding="utf-8") for path in written} == written


def test_export_refuses_an_incompatible_change_unless_allowed(scratch: Path) -> None:
    assert main([]) == 0
    path = export.schema_path(SlotDue)
    committed = json.loads(path.read_text(encoding="utf-8"))
    # Pretend the committed contract had a field the model has since dropped.
    committed["properties"]["legacy"] = {"type": "string"}
    tampered = export.render(committed)
    path.write_text(tampered, encoding="utf-8")

    assert main([]) == 1
    assert path.read_text(encoding="utf-8") == tampered
    assert main(["--allow-breaking"]) == 0
    assert path.read_text(encoding="utf-8") != tampered
