"""Routes: segments — CRUD, preview, members, static lists, refresh.

A segment is addressed by its slug or its id (``/segments/vip``,
``/segments/3``).  Rules arrive as text (``'purchase.count(90d) >= 3'``) or
as the JSON tree (see docs/rules.md); a rejected rule is a 422 problem whose
``errors[0]`` names ``body.rule`` (with ``line``, ``column`` and a caret
``context`` for text, or the ``path`` inside the tree).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NoReturn

import msgspec
from ecrm_core.errors import NotFound, ValidationError
from litestar import delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from ..cursors import decode_cursor, encode_cursor, keyed_page
from ..problems import problem, problem_responses
from ..types import ref_param
from .interactions import MAX_ID, Id

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.services.segments import Segment

    from ..app import ApiState

__all__ = ["HANDLERS", "rule_problem", "RuleIn", "compile_rule_field", "parse_ref"]

#: A rule: text, or the JSON tree.
RuleIn = Annotated[str, msgspec.Meta(max_length=20_000)] | dict[str, Any]
#: Customer ids in one request.
MAX_IDS = 10_000
#: Path names that are routes of their own, not segments.
RESERVED = frozenset({"preview"})

RefParam = ref_param("the segment's slug, or its id", r"_\-")


def parse_ref(ref: str, field: str = "path.ref") -> int | str:
    """A path reference: an id (digits) or a slug/code."""
    if ref.isdigit():
        value = int(ref)
        if not 1 <= value <= MAX_ID:
            raise ValidationError(field, ref, "not a valid id", "send an id between 1 and 2^63-1, or the slug")
        return value
    return ref


def rule_problem(exc: ValidationError, field: str = "body.rule", text: bool = False) -> NoReturn:
    """Raise the 422 problem for a rejected rule (``RuleError``/``RuleSyntaxError``).

    The error names ``field`` (``body.rule``), the ``path`` inside the rule's
    tree when known (``all[1].op``) and, for rule text, ``line``/``column``
    (from 1) and ``context`` (the line with a caret under the culprit).
    """
    entry: dict[str, Any] = {"field": field, "problem": exc.problem, "fix": exc.fix}
    inner = exc.field if exc.field not in ("", "rule") else ""
    if inner.startswith("rule."):
        inner = inner[len("rule.") :]
    if inner:
        entry["path"] = inner
    line = getattr(exc, "line", None)
    if text and line is not None:
        entry["line"] = line
        entry["column"] = getattr(exc, "column", None)
        entry["context"] = getattr(exc, "context", None)
    where = f" at line {line}, column {entry['column']}" if "line" in entry else (f" at {inner}" if inner else "")
    detail = f"{field}: {exc.problem}{where}; {exc.fix}"
    raise problem(422, "invalid-rule", "Invalid rule", detail, errors=[entry])


def compile_rule_field(crm: CRM, rule: Any, field: str = "body.rule") -> Mapping[str, Any]:
    """Validate a rule from a request into its canonical tree, or raise the problem."""
    try:
        return crm.segments.compile(rule).tree
    except ValidationError as exc:
        rule_problem(exc, field, text=isinstance(rule, str))


# ---------------------------------------------------------------------------
# schemas
# ---------------------------------------------------------------------------
Slug = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_\-]{0,63}$",
        extra_json_schema={"not": {"enum": sorted(RESERVED)}},
    ),
]
Name = Annotated[str, msgspec.Meta(max_length=200)]
Description = Annotated[str, msgspec.Meta(max_length=2000)]
Ids = Annotated[list[Id], msgspec.Meta(max_length=MAX_IDS)]


class SegmentIn(msgspec.Struct, forbid_unknown_fields=True):
    """A new segment: dynamic (``rule``) or static (``static: true``, optional ``customer_ids``)."""

    #: What the handler checks across fields, for the OpenAPI document.
    openapi_extra: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {
                "title": "static",
                "properties": {"static": {"const": True}, "rule": {"type": "null"}},
                "required": ["static"],
            },
            {
                "title": "dynamic",
                "properties": {
                    "static": {"const": False},
                    "rule": {"not": {"type": "null"}},
                    "customer_ids": {"maxItems": 0},
                },
                "required": ["rule"],
            },
        ]
    }

    slug: Slug
    rule: RuleIn | None = None
    name: Name | None = None
    description: Description = ""
    static: bool = False
    customer_ids: Ids = []


class SegmentPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields to change (absent: unchanged); a new rule is refreshed at once."""

    rule: RuleIn | msgspec.UnsetType = msgspec.UNSET
    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET


class SegmentOut(msgspec.Struct):
    """A stored segment; ``rule`` is the canonical tree and ``text`` the rule as text."""

    id: int
    slug: str
    name: str
    description: str
    kind: str
    rule: dict[str, Any] | None
    text: str | None
    member_count: int
    created_at: datetime
    updated_at: datetime
    refreshed_at: datetime | None
    #: why the rule last failed to evaluate (null: it evaluated at the last
    #: refresh); refreshes skip the segment and keep its last members meanwhile
    error: str | None = None
    #: when it failed
    error_at: datetime | None = None


class SegmentList(msgspec.Struct):
    items: list[SegmentOut]
    #: the slug to pass as ``after`` for the next page (``None``: this was the last)
    next: str | None = None


class PreviewIn(msgspec.Struct, forbid_unknown_fields=True):
    """A rule to try: nothing is stored."""

    rule: RuleIn
    sample: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 10


class PreviewOut(msgspec.Struct):
    """What the rule selects now: ``count``, a ``sample`` of customer ids, the
    SQL (parameters inlined for reading), the query plan and ``warnings``
    (e.g. a table read in full)."""

    count: int
    sample: list[int]
    sql: str
    plan: list[str]
    warnings: list[str]
    text: str


class MemberOut(msgspec.Struct):
    customer_id: int
    entered_at: datetime


class MemberPage(msgspec.Struct):
    """Members in customer-id order; ``next_cursor`` is null on the last page."""

    items: list[MemberOut]
    next_cursor: str | None


class MembersIn(msgspec.Struct, forbid_unknown_fields=True):
    """Customers to add to / remove from a static segment."""

    customer_ids: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=MAX_IDS)]


class MembersChange(msgspec.Struct):
    """What changed: the customers that entered or exited."""

    segment: SegmentOut
    entered: list[int]
    exited: list[int]


class RefreshFailureOut(msgspec.Struct):
    """A segment the refresh skipped because its rule failed (recorded on it as ``error``)."""

    slug: str
    error: str


class RefreshOut(msgspec.Struct):
    """What a refresh changed (per segment that changed) and which segments failed."""

    changes: list[MembersChange]
    entered: int
    exited: int
    seconds: float
    failed: list[RefreshFailureOut] = []


def segment_out(s: Segment) -> SegmentOut:
    from ecrm_core.validation import thaw

    return SegmentOut(
        id=s.id,
        slug=s.slug,
        name=s.name,
        description=s.description,
        kind=s.kind,
        rule=None if s.rule is None else thaw(s.rule),
        text=s.text,
        member_count=s.member_count,
        created_at=s.created_at,
        updated_at=s.updated_at,
        refreshed_at=s.refreshed_at,
        error=s.error,
        error_at=s.error_at,
    )


def _rule_errors(fn: Any, rule: Any) -> Any:
    """Run ``fn()``; a rejected rule (or a cycle) becomes the ``body.rule`` problem."""
    from ecrm_core.rules import RuleError
    from ecrm_core.rules.text import RuleSyntaxError

    try:
        return fn()
    except (RuleError, RuleSyntaxError) as exc:
        rule_problem(exc, "body.rule", text=isinstance(rule, str))


# ---------------------------------------------------------------------------
# handlers
# ---------------------------------------------------------------------------
@post(
    "/segments",
    opt={"scope": "write"},
    tags=["segments"],
    sync_to_thread=True,
    status_code=201,
    responses=problem_responses(404, 409),
)
def create_segment(data: JSONBody[SegmentIn], crm: NamedDependency[CRM]) -> SegmentOut:
    """Create a segment.

    Dynamic: send ``rule`` (text or tree); the segment is filled at once.
    Static: send ``static: true`` and optionally ``customer_ids``.  A taken
    slug is 409; a bad rule 422 naming ``body.rule`` (line, column and a
    caret for text); unknown customer ids 422 naming ``body.customer_ids``.
    """
    if data.slug in RESERVED:
        raise ValidationError("body.slug", data.slug, "reserved (it is a route)", "choose another slug")
    if data.static and data.rule is not None:
        raise ValidationError("body.rule", "<rule>", "a static segment has no rule", "drop the rule or static")
    if not data.static and data.customer_ids:
        raise ValidationError(
            "body.customer_ids", "<ids>", "only static segments take customer ids", "send static: true too"
        )
    if not data.static and data.rule is None:
        raise ValidationError("body.rule", None, "a dynamic segment needs a rule", "send a rule, or static: true")
    if data.static and data.customer_ids:
        _check_customers(crm, data.customer_ids)

    def run() -> Segment:
        return crm.segments.create(
            data.slug,
            data.rule,
            name=data.name,
            description=data.description,
            static=data.static,
            customer_ids=data.customer_ids,
        )

    return segment_out(_rule_errors(run, data.rule))


def _check_customers(crm: CRM, ids: list[int]) -> None:
    """422 naming ``body.customer_ids[i]`` for ids that are not live customers here."""
    import sqlalchemy as sa

    c = crm.db.tables["customers"]
    wanted = list(dict.fromkeys(ids))
    known: set[int] = set()
    with crm.db.read() as conn:
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            known.update(
                conn.scalars(
                    sa.select(c.c.id).where(
                        c.c.workspace_id == crm.workspace, c.c.merged_into.is_(None), c.c.id.in_(chunk)
                    )
                )
            )
    for i, v in enumerate(ids):
        if v not in known:
            raise ValidationError(
                f"body.customer_ids[{i}]", v, "no such customer in this workspace", "send ids of existing customers"
            )


@get("/segments", opt={"scope": "read"}, tags=["segments"], sync_to_thread=True, responses=problem_responses())
def list_segments(
    crm: NamedDependency[CRM],
    limit: Annotated[int, Parameter(ge=1, le=1000, description="segments per page (1-1,000)")] = 1000,
    after: Annotated[
        str | None, Parameter(min_length=1, max_length=128, description="the `next` of the previous page")
    ] = None,
) -> SegmentList:
    """The segments of the workspace by slug, ``limit`` a page (``next``: the ``after`` of the next page)."""
    page, following = keyed_page(crm.segments.list(), lambda s: s.slug, limit, after)
    return SegmentList(items=[segment_out(s) for s in page], next=following)


@get(
    "/segments/{ref:str}",
    opt={"scope": "read"},
    tags=["segments"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def get_segment(ref: RefParam, crm: NamedDependency[CRM]) -> SegmentOut:
    """One segment by slug or id (404, with a suggestion for a misspelt slug)."""
    return segment_out(crm.segments.get(parse_ref(ref)))


@patch(
    "/segments/{ref:str}",
    opt={"scope": "write"},
    tags=["segments"],
    sync_to_thread=True,
    responses=problem_responses(404, 409),
)
def update_segment(ref: RefParam, data: JSONBody[SegmentPatch], crm: NamedDependency[CRM]) -> SegmentOut:
    """Change a segment's rule, name or description; a new rule is validated
    (cycles included: 422 naming the cycle) and refreshed at once."""
    changes: dict[str, Any] = {}
    for name in ("rule", "name", "description"):
        value = getattr(data, name)
        if value is not msgspec.UNSET:
            changes[name] = value
    seg = crm.segments.get(parse_ref(ref))
    if "rule" in changes and seg.kind == "static":
        raise ValidationError("body.rule", "<rule>", "a static segment has no rule", "create a dynamic segment")
    return segment_out(_rule_errors(lambda: crm.segments.update(seg.id, **changes), changes.get("rule")))


@delete(
    "/segments/{ref:str}",
    opt={"scope": "write"},
    tags=["segments"],
    sync_to_thread=True,
    responses=problem_responses(404, 409),
)
def delete_segment(ref: RefParam, crm: NamedDependency[CRM]) -> None:
    """Delete a segment and its membership; 409 while other segments' rules
    or offers' eligibility use it."""
    crm.segments.delete(parse_ref(ref))


@post(
    "/segments/preview",
    opt={"scope": "read"},
    tags=["segments"],
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(503),
)
def preview_segment(data: JSONBody[PreviewIn], crm: NamedDependency[CRM]) -> PreviewOut:
    """What a rule would select now — count, sample ids, SQL, plan, warnings.

    Nothing is stored.  A count that takes longer than 30 s is cancelled in
    the database (503).
    """
    from ecrm_core.services.segments import Cancelled

    try:
        p = _rule_errors(lambda: crm.segments.preview(data.rule, sample=data.sample, timeout=30), data.rule)
    except Cancelled:
        raise problem(
            503,
            "preview-timeout",
            "Preview took too long",
            "the count was cancelled after 30 s; narrow the rule (add a kind or a window to event conditions)",
        ) from None
    return PreviewOut(
        count=p.count,
        sample=[c.id for c in p.sample],
        sql=p.sql,
        plan=list(p.plan),
        warnings=list(p.warnings),
        text=p.text,
    )


@get(
    "/segments/{ref:str}/members",
    opt={"scope": "read"},
    tags=["segments"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def segment_members(
    ref: RefParam,
    crm: NamedDependency[CRM],
    api: NamedDependency[ApiState],
    limit: Annotated[int, Parameter(ge=1, le=1000, description="members per page")] = 100,
    cursor: Annotated[str | None, Parameter(max_length=2000, description="`next_cursor` of the previous page")] = None,
) -> MemberPage:
    """The members, in customer-id order, with the time each entered (cursor-paginated)."""
    seg = crm.segments.get(parse_ref(ref))
    scope = f"{crm.workspace}:segment-members:{seg.id}"
    after = None
    if cursor is not None:
        after = decode_cursor(api.config.secret, scope, cursor)
        if isinstance(after, bool) or not isinstance(after, int):
            raise ValidationError("query.cursor", after, "not a members cursor", "send `next_cursor` back unchanged")
    rows = crm.segments.members(seg.id, limit=limit + 1, after=after)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(api.config.secret, scope, rows[-1].customer_id) if more and rows else None
    return MemberPage(items=[MemberOut(m.customer_id, m.entered_at) for m in rows], next_cursor=nxt)


def _static_change(crm: CRM, ref: str, ids: list[int], add: bool) -> MembersChange:
    seg = crm.segments.get(parse_ref(ref))
    if seg.kind != "static":
        raise ValidationError(
            "path.ref", seg.slug, "a dynamic segment's members come from its rule", "change its rule instead"
        )
    _check_customers(crm, ids)
    try:
        change = crm.segments.add(seg.id, ids) if add else crm.segments.remove(seg.id, ids)
    except NotFound as exc:  # a customer deleted meanwhile
        raise ValidationError("body.customer_ids", exc.key, "no such customer", "send existing ids") from None
    return MembersChange(segment_out(change.segment), list(change.entered), list(change.exited))


@post(
    "/segments/{ref:str}/members",
    opt={"scope": "write"},
    tags=["segments"],
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(404),
)
def add_members(ref: RefParam, data: JSONBody[MembersIn], crm: NamedDependency[CRM]) -> MembersChange:
    """Add customers to a static segment (those already in are skipped);
    ``entered`` lists the ones added."""
    return _static_change(crm, ref, data.customer_ids, add=True)


@delete(
    "/segments/{ref:str}/members",
    opt={"scope": "write"},
    tags=["segments"],
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(404),
)
def remove_members(ref: RefParam, data: JSONBody[MembersIn], crm: NamedDependency[CRM]) -> MembersChange:
    """Remove customers from a static segment; ``exited`` lists the ones removed."""
    return _static_change(crm, ref, data.customer_ids, add=False)


@post(
    "/segments/{ref:str}/refresh",
    opt={"scope": "write"},
    tags=["segments"],
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(404, 409),
)
def refresh_segment(ref: RefParam, crm: NamedDependency[CRM]) -> RefreshOut:
    """Re-evaluate a dynamic segment (and the segments that use it) now."""
    report = _rule_errors(lambda: crm.segments.refresh(parse_ref(ref)), None)
    return RefreshOut(
        changes=[MembersChange(segment_out(c.segment), list(c.entered), list(c.exited)) for c in report.changes],
        entered=report.entered,
        exited=report.exited,
        seconds=report.seconds,
        failed=[RefreshFailureOut(f.slug, f.error) for f in report.failed],
    )


HANDLERS: list[Any] = [
    create_segment,
    list_segments,
    preview_segment,
    get_segment,
    update_segment,
    delete_segment,
    segment_members,
    add_members,
    remove_members,
    refresh_segment,
]
