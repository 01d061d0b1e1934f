"""The OpenAPI document, made exact from the declarations the server validates with.

Litestar writes the document from the handlers' signatures, but loses part
of what the server enforces: numeric bounds become floats (``2**63 - 1``
turns into ``9.223372036854776e18``, which is ``2**63``), and constraints
on nested types (``list[Annotated[int, Meta(ge=1)]]``) or a struct's
``forbid_unknown_fields`` do not reach the schema.  The server decodes
request bodies with msgspec, so here each JSON request body's schema is
replaced by the one msgspec itself derives from the same struct
(:func:`msgspec.json.schema_components`: exact integers, every nested
constraint, ``additionalProperties: false`` for the structs that refuse
unknown fields), and the bounds of path and query parameters are copied
exactly from their :class:`~litestar.params.Parameter` declarations.

Values whose validity depends on what is registered in the CRM (lifecycle
stages, interaction kinds) are enumerated from the CRM the app serves.

:func:`install` hooks this into an app's OpenAPI plugin; the document is
still built lazily, on its first request.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
from litestar._openapi.plugin import OpenAPIPlugin

if TYPE_CHECKING:  # pragma: no cover
    from litestar import Litestar

__all__ = ["install", "refine", "operations", "body_type", "REF"]

#: Where request body component schemas are referenced from.
REF = "#/components/schemas/{name}"
_CONVERTER = re.compile(r"\{([^}:]+):[^}]+\}")
_BOUNDS = (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusiveMinimum"), ("lt", "exclusiveMaximum"))

#: ``(component, property)`` or ``("query", parameter)`` → a function of the
#: CRM returning the values the server accepts there (see :func:`registered`).
Registered = dict[tuple[str, str], Callable[[Any], list[str]]]


class _RefiningOpenAPIPlugin(OpenAPIPlugin):
    """Litestar's OpenAPI plugin whose JSON document goes through :func:`refine`."""

    __slots__ = ()

    def provide_openapi_schema(self) -> dict[str, Any]:
        if not self._openapi_schema:
            self._openapi_schema = refine(self.provide_openapi().to_schema(), self.app)
        return self._openapi_schema


def install(app: Litestar) -> None:
    """Make ``app``'s served OpenAPI document (``…/docs/openapi.json`` and the pages) the refined one."""
    plugin = app.plugins.get(OpenAPIPlugin)
    plugin.__class__ = _RefiningOpenAPIPlugin


def document(app: Litestar) -> dict[str, Any]:
    """The OpenAPI document ``app`` serves (refined), as a dict."""
    return app.plugins.get(OpenAPIPlugin).provide_openapi_schema()


def operations(app: Litestar) -> Iterator[tuple[str, str, Any]]:
    """``(document path, lower-case method, handler)`` of every documented operation."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not getattr(handler, "include_in_schema", False):
                continue
            path = _CONVERTER.sub(r"{\1}", route.path)
            for method in sorted(getattr(handler, "http_methods", ())):
                if method not in ("HEAD", "OPTIONS"):
                    yield path, method.lower(), handler


def body_type(handler: Any) -> type[msgspec.Struct] | None:
    """The msgspec struct a handler decodes its JSON body into, if any."""
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return None
    annotation = data.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct) else None


def refine(doc: dict[str, Any], app: Litestar) -> dict[str, Any]:
    """Make ``doc`` (Litestar's document for ``app``) say exactly what the server validates."""
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    ops = [(path, method, handler) for path, method, handler in operations(app) if path in doc.get("paths", {})]
    bodies = {(path, method): t for path, method, handler in ops if (t := body_type(handler)) is not None}
    types = sorted(set(bodies.values()), key=lambda t: (t.__module__, t.__qualname__))
    if types:
        tops, components = msgspec.json.schema_components(types, ref_template=REF)
        top = dict(zip(types, tops, strict=True))
        extras = {cls.__name__: cls.openapi_extra for cls in _structs(types) if hasattr(cls, "openapi_extra")}
        for name, schema in components.items():
            schemas[name] = _free_text_rule({**schema, **extras.get(name, {})})
        schemas[JSON_VALUE] = _json_value()
        for (path, method), t in bodies.items():
            operation = doc["paths"][path][method]
            for media in operation.get("requestBody", {}).get("content", {}).values():
                media["schema"] = top[t]
    for path, method, handler in ops:
        operation = doc["paths"][path][method]
        for parameter in operation.get("parameters", ()):
            _exact_bounds(parameter, handler)
    _registered_values(doc, app)
    return doc


#: The component of a free JSON value in a request body (attributes, properties…).
JSON_VALUE = "JSONValue"


def _json_value() -> dict[str, Any]:
    """Any JSON value the server takes in a free-form field: the core's rules
    (:func:`ecrm_core.validation.check_json`) that a schema can state."""
    from ecrm_core.validation import MAX_INT, MAX_JSON_DEPTH, MAX_JSON_KEYS, MAX_KEY_LENGTH, MIN_INT

    from .types import KEY_PATTERN, TEXT_PATTERN

    ref = {"$ref": REF.format(name=JSON_VALUE)}
    keys = {"pattern": KEY_PATTERN, "maxLength": MAX_KEY_LENGTH}
    return {
        "description": (
            "any JSON value: text without control characters (tab, line feed and carriage return allowed,"
            " not in keys) or lone surrogates, keys of at most"
            f" {MAX_KEY_LENGTH} characters, integers within 64 bits; in all at most {MAX_JSON_KEYS} keys,"
            f" nested at most {MAX_JSON_DEPTH} deep"
        ),
        "anyOf": [
            {"type": "null"},
            {"type": "boolean"},
            {"type": "integer", "minimum": MIN_INT, "maximum": MAX_INT},
            {"type": "number", "not": {"type": "integer"}},
            {"type": "string", "pattern": TEXT_PATTERN},
            {"type": "array", "items": ref},
            {"type": "object", "additionalProperties": ref, "propertyNames": keys, "maxProperties": MAX_JSON_KEYS},
        ],
    }


def _free_text_rule(schema: Any) -> Any:
    """Add the body text rule to every string without a pattern, and to free-form objects."""
    from ecrm_core.validation import MAX_JSON_KEYS, MAX_KEY_LENGTH

    from .types import KEY_PATTERN, TEXT_PATTERN

    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if kind == "string" and "pattern" not in node and "enum" not in node and "const" not in node:
            node["pattern"] = TEXT_PATTERN
        elif kind == "object" and "properties" not in node:
            if node.get("additionalProperties", True) is True:  # free-form JSON data: the core's limits
                node["additionalProperties"] = {"$ref": REF.format(name=JSON_VALUE)}
                node.setdefault("propertyNames", {"pattern": KEY_PATTERN, "maxLength": MAX_KEY_LENGTH})
                node.setdefault("maxProperties", MAX_JSON_KEYS)
            else:  # a declared map: its keys follow the core's key rule too (ecrm_api.bodies)
                node.setdefault("propertyNames", {"pattern": KEY_PATTERN})
        stack.extend(v for k, v in node.items() if isinstance(v, (dict, list)) and k != "enum")
    return schema


def _structs(types: list[type[msgspec.Struct]]) -> Iterator[type[msgspec.Struct]]:
    """Every struct type reachable from ``types`` (fields, containers, unions)."""
    seen: set[type] = set()
    stack: list[Any] = list(msgspec.inspect.multi_type_info(types))
    while stack:
        info = stack.pop()
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                continue
            seen.add(info.cls)
            yield info.cls
            stack.extend(f.type for f in info.fields)
        elif isinstance(info, msgspec.inspect.UnionType):
            stack.extend(info.types)
        elif isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.SetType, msgspec.inspect.FrozenSetType)):
            stack.append(info.item_type)
        elif isinstance(info, msgspec.inspect.DictType):
            stack.extend((info.key_type, info.value_type))
        elif isinstance(info, msgspec.inspect.Metadata):
            stack.append(info.type)


def _exact_bounds(parameter: dict[str, Any], handler: Any) -> None:
    """Copy a parameter's numeric bounds from its declaration (Litestar writes them as floats)."""
    for name, declared in handler.parsed_fn_signature.parameters.items():
        definition = declared.kwarg_definition
        alias = getattr(definition, "query", None) or getattr(definition, "header", None) or name
        if alias != parameter["name"] and name != parameter["name"]:
            continue
        for attr, key in _BOUNDS:
            value = getattr(definition, attr, None)
            if value is not None:
                _set_bound(parameter["schema"], key, value)
        item = _list_item(declared.annotation)
        if item is not None:  # Litestar drops the constraints of the items
            _set_items(parameter["schema"], msgspec.json.schema(item))


def _list_item(annotation: Any) -> Any:
    """The item type of a ``list[...]`` annotation (also inside ``| None``), else None."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return typing.get_args(annotation)[0]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _list_item(arg)
            if found is not None:
                return found
    return None


def _set_items(schema: Any, items: dict[str, Any]) -> None:
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "array":
        schema["items"] = items
    for branch in (*schema.get("oneOf", ()), *schema.get("anyOf", ())):
        _set_items(branch, items)


def _set_bound(schema: Any, key: str, value: Any) -> None:
    if not isinstance(schema, dict):
        return
    if key in schema:
        schema[key] = value
    for branch in (*schema.get("oneOf", ()), *schema.get("anyOf", ())):
        _set_bound(branch, key, value)


def _registered_values(doc: dict[str, Any], app: Litestar) -> None:
    """Enumerate the values that the CRM's registries decide (stages, kinds)."""
    state = app.state.get("ecrm")
    if state is None:
        return
    crm = state.crm
    schemas = doc["components"]["schemas"]
    for (where, name), values_of in REGISTERED.items():
        values = values_of(crm)
        if where == "query":
            for item in doc["paths"].values():
                for operation in item.values():
                    for parameter in operation.get("parameters", ()) if isinstance(operation, dict) else ():
                        if parameter.get("in") == "query" and parameter["name"] == name:
                            _enumerate(parameter["schema"], values)
            continue
        component = schemas.get(where)
        if component is not None and name in component.get("properties", {}):
            _enumerate(component["properties"][name], values)


def _enumerate(schema: dict[str, Any], values: list[str]) -> None:
    """Restrict the string branch of ``schema`` (or its array items) to ``values``."""
    if schema.get("type") == "array":
        _enumerate(schema["items"], values)
        return
    if schema.get("type") == "string":
        schema["enum"] = values
        return
    for branch in (*schema.get("oneOf", ()), *schema.get("anyOf", ())):
        _enumerate(branch, values)


def _stages(crm: Any) -> list[str]:
    return sorted(crm.registry.lifecycle_stages)


def _kinds(crm: Any) -> list[str]:
    return sorted(crm.registry.interaction_kinds)


REGISTERED: Registered = {
    ("CustomerIn", "lifecycle_stage"): _stages,
    ("CustomerPatch", "lifecycle_stage"): _stages,
    ("CustomerUpsertIn", "lifecycle_stage"): _stages,
    ("query", "lifecycle_stage"): _stages,
    ("InteractionIn", "kind"): _kinds,
    ("query", "kinds"): _kinds,
}
