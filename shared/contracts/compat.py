"""Backward compatibility between two JSON Schemas of one event contract.

Producers and consumers of an event are deployed independently, so during a rollout an
old consumer reads messages from a new producer and a new consumer reads messages from an
old producer. A change is incompatible when either side of that pair would fail: a field
removed or newly required, a field whose set of allowed types or values changed in any
direction, a changed subject. Adding an optional property is compatible because every
contract ignores unknown fields, unless the old schema forbids additional properties.

Making a required field optional is not reported: pydantic producers serialise defaults,
so consumers of the old schema still receive the field. Length, pattern and range
constraints are not compared either; only the shape of the data is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

JsonSchema = Mapping[str, Any]

# The schema that allows anything, which is what a missing ``items`` means.
_ANY: JsonSchema = {}


def incompatibilities(old_schema: dict[str, Any], new_schema: dict[str, Any]) -> list[str]:
    """Every change from ``old_schema`` to ``new_schema`` that a producer or consumer of the
    old schema would break on, as messages naming the event and the field."""
    event = _event_name(new_schema) or _event_name(old_schema) or "<untitled schema>"
    problems = list(_subject_changes(event, old_schema, new_schema))
    comparison = _Comparison(event=event, old_root=old_schema, new_root=new_schema)
    problems.extend(comparison.values(old_schema, new_schema, path=""))
    return problems


def _event_name(schema: JsonSchema) -> str | None:
    # A recursive model's schema is only a ``$ref`` into its own ``$defs``.
    if "$ref" in schema and "title" not in schema:
        schema = _pointer(schema, str(schema["$ref"]))
    title = schema.get("title")
    return str(title) if title else None


def _subject_changes(event: str, old: JsonSchema, new: JsonSchema) -> Iterator[str]:
    # Consumers subscribe by subject, so moving an event to another subject silences it.
    old_subject, new_subject = old.get("x-subject"), new.get("x-subject")
    if old_subject is not None and old_subject != new_subject:
        yield f"{event}: subject changed from {old_subject!r} to {new_subject!r}"


@dataclass(frozen=True)
class _Leaf:
    """One alternative of a value's schema once references and unions are flattened.

    ``kind`` is ``const``, ``scalar``, ``object`` or ``array``; ``key`` identifies the
    alternative across the two schemas and ``label`` names it in messages.
    """

    kind: str
    key: str
    label: str
    node: JsonSchema = field(default_factory=dict, compare=False, hash=False)


@dataclass
class _Comparison:
    event: str
    old_root: JsonSchema
    new_root: JsonSchema
    # Pairs of object schemas being compared further up the current path: a recursive
    # model would otherwise loop. Only the current path counts, so a model used by two
    # fields is reported under both.
    _open: set[tuple[int, int]] = field(default_factory=set)
    # Merged ``allOf`` nodes, kept so that the same source node always yields the same
    # object and the cycle guard above recognises it.
    _merged: dict[int, JsonSchema] = field(default_factory=dict)

    # --- comparing ------------------------------------------------------------------

    def values(self, old: JsonSchema, new: JsonSchema, path: str) -> Iterator[str]:
        """Compare the schemas of one value (a field, an array item or the event)."""
        old_leaves = self._leaves(old, self.old_root)
        new_leaves = self._leaves(new, self.new_root)
        objects, unmatched = _pair_objects(old_leaves, new_leaves)
        arrays = _pair_arrays(old_leaves, new_leaves)
        yield from self._alternatives(old_leaves, new_leaves, unmatched, path)
        in_union = _count(old_leaves, "object") > 1 or _count(new_leaves, "object") > 1
        for old_object, new_object in objects:
            branch = f"{path}[{new_object.label}]" if in_union else path
            yield from self.objects(old_object.node, new_object.node, branch)
        for old_array, new_array in arrays:
            yield from self.values(
                old_array.node.get("items", _ANY), new_array.node.get("items", _ANY), f"{path}[]"
            )

    def objects(self, old: JsonSchema, new: JsonSchema, path: str) -> Iterator[str]:
        """Compare two object schemas property by property."""
        pair = (id(old), id(new))
        if pair in self._open:
            return
        self._open.add(pair)
        try:
            yield from self._properties(old, new, path)
            yield from self._additional_properties(old, new, path)
        finally:
            self._open.discard(pair)

    def _properties(self, old: JsonSchema, new: JsonSchema, path: str) -> Iterator[str]:
        old_props: JsonSchema = old.get("properties", {})
        new_props: JsonSchema = new.get("properties", {})
        old_required = set(old.get("required", ()))
        new_required = set(new.get("required", ()))
        for name, old_prop in old_props.items():
            if name not in new_props:
                yield self._message(_join(path, name), "was removed")
            else:
                yield from self.values(old_prop, new_props[name], _join(path, name))
        for name in new_props:
            if name in old_props:
                if name in new_required and name not in old_required:
                    yield self._message(_join(path, name), "is newly required")
            elif name in new_required:
                yield self._message(_join(path, name), "was added as a required field")
            elif old.get("additionalProperties") is False:
                yield self._message(
                    _join(path, name), "was added but the old schema forbids unknown fields"
                )

    def _additional_properties(self, old: JsonSchema, new: JsonSchema, path: str) -> Iterator[str]:
        old_extra = old.get("additionalProperties", True)
        new_extra = new.get("additionalProperties", True)
        if new_extra is False and old_extra is not False:
            where = f"object '{path}'" if path else "the event"
            yield f"{self.event}: {where} now forbids unknown fields"
        elif isinstance(old_extra, Mapping) and isinstance(new_extra, Mapping):
            yield from self.values(old_extra, new_extra, f"{path}{{}}")

    def _alternatives(
        self,
        old_leaves: list[_Leaf],
        new_leaves: list[_Leaf],
        unmatched_objects: bool,
        path: str,
    ) -> Iterator[str]:
        """Report a change in the set of types or values a field allows."""
        old_simple = {leaf for leaf in old_leaves if leaf.kind in ("const", "scalar")}
        new_simple = {leaf for leaf in new_leaves if leaf.kind in ("const", "scalar")}
        removed, added = old_simple - new_simple, new_simple - old_simple
        arrays_differ = (_count(old_leaves, "array") > 0) != (_count(new_leaves, "array") > 0)
        if not (removed or added or unmatched_objects or arrays_differ):
            return
        only_values = all(leaf.kind == "const" for leaf in removed | added)
        if unmatched_objects or arrays_differ or not only_values:
            yield self._message(
                path, f"changed type from {_describe(old_leaves)} to {_describe(new_leaves)}"
            )
        elif _count(old_leaves, "const") == 1 and len(removed) == 1 and len(added) == 1:
            (before,), (after,) = removed, added
            yield self._message(path, f"const changed from {before.label} to {after.label}")
        else:
            for leaf in sorted(removed, key=lambda leaf: leaf.key):
                yield self._message(path, f"no longer allows value {leaf.label}")
            for leaf in sorted(added, key=lambda leaf: leaf.key):
                yield self._message(
                    path, f"allows new value {leaf.label}, which old consumers reject"
                )

    def _message(self, path: str, what: str) -> str:
        return f"{self.event}: field '{path or '<root>'}' {what}"

    # --- flattening -----------------------------------------------------------------

    def _leaves(self, node: JsonSchema, root: JsonSchema) -> list[_Leaf]:
        """The alternatives a schema allows, with references and unions resolved."""
        node = self._resolve(node, root)
        branches = node.get("anyOf") or node.get("oneOf")
        if branches:
            return _unique(leaf for branch in branches for leaf in self._leaves(branch, root))
        if "const" in node:
            return [_const(node["const"])]
        if "enum" in node:
            return _unique(_const(value) for value in node["enum"])
        types = node.get("type")
        if types is None:
            types = ["object"] if "properties" in node else []
        if isinstance(types, str):
            types = [types]
        if not types:
            return [_Leaf("scalar", "any", "any")]
        return [self._typed(kind, node, root) for kind in types]

    def _typed(self, kind: str, node: JsonSchema, root: JsonSchema) -> _Leaf:
        if kind == "object":
            return _Leaf("object", self._object_key(node, root), _object_label(node), node)
        if kind == "array":
            return _Leaf("array", "array", "array", node)
        fmt = node.get("format")
        label = f"{kind} ({fmt})" if fmt else kind
        return _Leaf("scalar", label, label)

    def _object_key(self, node: JsonSchema, root: JsonSchema) -> str:
        """Identify an object alternative by its discriminator, e.g. ``type="webhook"``, so
        that the branches of a discriminated union pair up even if their models are renamed."""
        for name, prop in sorted(node.get("properties", {}).items()):
            resolved = self._resolve(prop, root)
            if "const" in resolved:
                return f"{name}={json.dumps(resolved['const'], sort_keys=True)}"
        return _object_label(node)

    def _resolve(self, node: JsonSchema, root: JsonSchema) -> JsonSchema:
        """Follow ``$ref`` chains and merge ``allOf`` so that only the shape is left."""
        followed: set[str] = set()
        while "$ref" in node:
            ref = str(node["$ref"])
            if ref in followed:
                raise ValueError(f"$ref cycle through {ref!r}")
            followed.add(ref)
            node = _pointer(root, ref)
        if "allOf" in node:
            node = self._merge_all_of(node, root)
        return node

    def _merge_all_of(self, node: JsonSchema, root: JsonSchema) -> JsonSchema:
        cached = self._merged.get(id(node))
        if cached is not None:
            return cached
        merged: dict[str, Any] = {key: value for key, value in node.items() if key != "allOf"}
        self._merged[id(node)] = merged
        for part in node["allOf"]:
            resolved = self._resolve(part, root)
            merged["properties"] = {
                **resolved.get("properties", {}),
                **merged.get("properties", {}),
            }
            merged["required"] = sorted(
                {*merged.get("required", ()), *resolved.get("required", ())}
            )
            for key, value in resolved.items():
                merged.setdefault(key, value)
        return merged


def _pair_objects(
    old_leaves: list[_Leaf], new_leaves: list[_Leaf]
) -> tuple[list[tuple[_Leaf, _Leaf]], bool]:
    """Pair object alternatives by key; returns the pairs and whether any were left over.

    Outside a union the only object on each side is paired whatever its key, so renaming a
    nested model or changing the event's ``type`` is reported field by field rather than
    as a different type.
    """
    old_objects = {leaf.key: leaf for leaf in old_leaves if leaf.kind == "object"}
    new_objects = {leaf.key: leaf for leaf in new_leaves if leaf.kind == "object"}
    if len(old_objects) == 1 and len(new_objects) == 1:
        return [(next(iter(old_objects.values())), next(iter(new_objects.values())))], False
    pairs = [(leaf, new_objects[key]) for key, leaf in old_objects.items() if key in new_objects]
    unmatched = old_objects.keys() != new_objects.keys()
    return pairs, unmatched


def _pair_arrays(old_leaves: list[_Leaf], new_leaves: list[_Leaf]) -> list[tuple[_Leaf, _Leaf]]:
    old_arrays = [leaf for leaf in old_leaves if leaf.kind == "array"]
    new_arrays = [leaf for leaf in new_leaves if leaf.kind == "array"]
    if old_arrays and new_arrays:
        return [(old_arrays[0], new_arrays[0])]
    return []


def _object_label(node: JsonSchema) -> str:
    return str(node.get("title") or "object")


def _const(value: Any) -> _Leaf:
    # JSON text tells 1 from true and "1", which Python equality would not.
    text = json.dumps(value, sort_keys=True)
    return _Leaf("const", text, text)


def _unique(leaves: Iterable[_Leaf]) -> list[_Leaf]:
    result: list[_Leaf] = []
    for leaf in leaves:
        if leaf not in result:
            result.append(leaf)
    return result


def _count(leaves: list[_Leaf], kind: str) -> int:
    return sum(1 for leaf in leaves if leaf.kind == kind)


def _describe(leaves: list[_Leaf]) -> str:
    return " | ".join(leaf.label for leaf in leaves) or "nothing"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _pointer(root: JsonSchema, ref: str) -> JsonSchema:
    """Resolve a local JSON pointer such as ``#/$defs/ChannelSummary``."""
    if not ref.startswith("#"):
        raise ValueError(f"only local $ref are supported, got {ref!r}")
    node: Any = root
    for part in ref[1:].split("/")[1:]:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    if not isinstance(node, Mapping):
        raise ValueError(f"$ref {ref!r} does not point to a schema")
    return node
