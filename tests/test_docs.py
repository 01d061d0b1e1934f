"""Meta-tests: the documentation matches the code.

1. Every hook spec is documented in ``docs/hooks.md`` with its exact
   signature (adding a hook or changing a signature fails until the docs say so).
2. Every hook is named in at least one test module (every hook has a test).
3. Every ```python block of ``docs/**/*.md`` runs, page by page, in a temporary
   directory, as the body of a module of its own (fence a block as
   ```python no-run to skip it).
4. Every public name of ``ecrm_core`` is mentioned somewhere in ``docs/``.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import ecrm_core
from ecrm_core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TESTS = ROOT / "tests"
HOOKS_PAGE = DOCS / "hooks.md"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")


def hook_specs() -> dict[str, Any]:
    """Every hook spec function of ``ecrm_core.hookspecs`` (``ecrm_*``), by name."""
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if name.startswith("ecrm_") and inspect.isfunction(fn) and fn.__module__ == hookspecs.__name__
    }


def _annotation(annotation: Any) -> str:
    # The module uses ``from __future__ import annotations``: annotations are
    # the source text.  Fall back to typing's rendering if that ever changes.
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def render_signature(name: str, fn: Any) -> str:
    """``name(param: annotation, ...) -> return``, as written in docs/hooks.md."""
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name
        if p.annotation is not inspect.Parameter.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        params.append(text)
    out = f"{name}({', '.join(params)})"
    if sig.return_annotation is not inspect.Signature.empty:
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """Fenced code blocks of a Markdown text as ``(info string, code, line)``."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip(), i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # closing fence
        indent = len(m["indent"])
        blocks.append((info, "\n".join(line[indent:] for line in body) + "\n", start))
    return blocks


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


# ---------------------------------------------------------------------------
# 1. every hook documented with its exact signature
# ---------------------------------------------------------------------------


def test_hook_specs_exist() -> None:
    assert len(hook_specs()) >= 10


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_documented_with_exact_signature(name: str) -> None:
    expected = render_signature(name, hook_specs()[name])
    code_lines = {
        line.strip()
        for info, code, _ in code_blocks(HOOKS_PAGE.read_text(encoding="utf-8"))
        if not info.startswith("python") or "no-run" in info
        for line in code.splitlines()
    }
    assert expected in code_lines, (
        f"docs/hooks.md must show the signature of {name} in a code block, exactly:\n    {expected}"
    )


def test_hooks_page_documents_no_removed_hook() -> None:
    specs = hook_specs()
    documented = set()
    for info, code, _ in code_blocks(HOOKS_PAGE.read_text(encoding="utf-8")):
        if info.startswith("python") and "no-run" not in info:
            continue
        documented |= {m.group(1) for m in re.finditer(r"^\s*(ecrm_\w+)\(", code, re.M)}
    stale = documented - set(specs)
    assert not stale, f"docs/hooks.md documents hooks that do not exist: {sorted(stale)}"


# ---------------------------------------------------------------------------
# 2. every hook has a test
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_has_a_test(name: str) -> None:
    # test_<hook> function names count too, so no \b before the name
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9_])")
    this = Path(__file__).resolve()
    files = [p for p in TESTS.rglob("*.py") if p.resolve() != this]
    assert any(pattern.search(p.read_text(encoding="utf-8")) for p in files), (
        f"no test under tests/ mentions the hook {name}; add one (tests/test_hooks.py)"
    )


# ---------------------------------------------------------------------------
# 3. every python example runs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_doc_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("ECRM_PLUGINS", "ECRM_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    # A real module, so that libraries resolving annotations through
    # sys.modules[fn.__module__] (Litestar, attrs) find the page's names.
    name = "docs_" + "_".join(page.relative_to(DOCS).with_suffix("").parts).replace("-", "_")
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    namespace: dict[str, Any] = module.__dict__
    blocks = [
        (code, line)
        for info, code, line in code_blocks(page.read_text(encoding="utf-8"))
        if info.split()[:1] == ["python"] and "no-run" not in info.split()
    ]
    try:
        for code, line in blocks:
            try:
                # pad with blank lines so tracebacks point at the Markdown line
                exec(compile("\n" * line + code, str(page), "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"the example at {page.name} line {line} failed: {exc!r}") from exc
    finally:
        from ecrm_core import CRM

        for value in list(namespace.values()):
            if isinstance(value, CRM):
                value.close()


def test_there_are_examples() -> None:
    pages = {p.name for p in DOCS.glob("*.md")}
    for name in (
        "index.md",
        "quickstart.md",
        "domain.md",
        "storage.md",
        "api.md",
        "hooks.md",
        "plugins.md",
        "testing.md",
    ):
        assert name in pages, f"docs/{name} is missing"
        text = (DOCS / name).read_text(encoding="utf-8")
        if name != "index.md":
            assert any(info.split()[:1] == ["python"] for info, _, _ in code_blocks(text)), (
                f"docs/{name} has no example"
            )


# ---------------------------------------------------------------------------
# 4. every public name documented
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ecrm_core.__all__))
def test_public_name_documented(name: str) -> None:
    # test_<hook> function names count too, so no \b before the name
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9_])")
    texts = [p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md")]
    assert any(pattern.search(t) for t in texts), f"ecrm_core.{name} is not mentioned in docs/"
