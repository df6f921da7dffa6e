"""Error codes are defined once, in ``errors.Code``: no code in ``alltalk_host`` or in the
in-tree plugins is spelled as a string, so a renamed or misspelled one cannot drift from what
clients are told.

Read from the source (a static check), because most of these places run only on error paths.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

import pytest

from alltalk_host.errors import Code

from .helpers import ROOT

PACKAGE = ROOT / "alltalk_host"
# HostError itself takes any string: a third-party plugin may raise it with a code of its own,
# which it cannot add to Code. Everything else in the package uses Code members, and so do the
# in-tree plugins (the contract exports Code: ``from alltalk_host import Code``).
EXEMPT = {PACKAGE / "errors.py"}
PLUGINS = sorted(ROOT.glob("plugins/*/alltalk_host_*"))
SOURCES = sorted(p for folder in (PACKAGE, *PLUGINS) for p in folder.rglob("*.py")
                 if p not in EXEMPT)


def _is_member(node: ast.expr | None) -> bool:
    """``Code.X`` for a real X, or a choice between such (``Code.A if c else Code.B``)."""
    if isinstance(node, ast.IfExp):
        return _is_member(node.body) and _is_member(node.orelse)
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "Code" and node.attr in Code.__members__)


def _says_code(annotation: ast.expr | None) -> bool:
    """An annotation of Code, or of Code | None."""
    return annotation is not None and any(
        isinstance(n, ast.Name) and n.id == "Code" for n in ast.walk(annotation))


def _is_text(node: ast.expr | None) -> bool:
    if isinstance(node, ast.IfExp):
        return _is_text(node.body) or _is_text(node.orelse)
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or isinstance(
        node, ast.JoinedStr)


def _is_code_attr(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "code"


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _code_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Names declared as a Code in ``fn``: its parameters and annotated assignments."""
    args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
    names = {a.arg for a in args if _says_code(a.annotation)}
    names |= {n.target.id for n in ast.walk(fn)
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
              and _says_code(n.annotation)}
    return names


def _code_param_positions(tree: ast.AST) -> dict[str, int]:
    """Functions of this module that take a ``code`` parameter: name -> its position."""
    out = {}
    for fn in _functions(tree):
        names = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
        if "code" in names:
            out[fn.name] = names.index("code") - (1 if names[0] in ("self", "cls") else 0)
    return out


def _mapped_by_text(tree: ast.Module) -> set[str]:
    """Module-level dicts keyed by string literals."""
    out = set()
    for node in tree.body:
        if (isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict)
                and node.value.keys and all(_is_text(k) for k in node.value.keys)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {t.id for t in targets if isinstance(t, ast.Name)}
    return out


def problems(source: str, where: str) -> Iterator[str]:
    """Every place in ``source`` (a module's text) where a code is spelled as a string."""
    tree = ast.parse(source, where)
    positions = _code_param_positions(tree)
    by_text = _mapped_by_text(tree)
    declared: dict[int, set[str]] = {}  # call -> names its function declares as a Code
    for fn in _functions(tree):  # outer functions first: an inner one's names win
        names = _code_names(fn)
        declared |= {id(n): names for n in ast.walk(fn) if isinstance(n, ast.Call)}
        positional = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
        defaults = dict(zip(positional[len(positional) - len(fn.args.defaults):],
                            fn.args.defaults, strict=True))
        defaults |= {a.arg: d for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults,
                                              strict=True) if d is not None}
        for arg in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
            if arg.arg == "code" and not _says_code(arg.annotation):
                yield f"{where}:{arg.lineno}: parameter code of {fn.name} is not a Code"
            if arg.arg == "code" and _is_text(defaults.get("code")):
                yield f"{where}:{arg.lineno}: parameter code of {fn.name} defaults to a string"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            value = kw.value
            # error.code passes another error's code on: errors are built with Code members.
            if kw.arg == "code" and not _is_member(value) and not _is_code_attr(value) and not (
                    isinstance(value, ast.Name) and value.id in declared.get(id(node), ())):
                yield (f"{where}:{kw.lineno}: code={ast.unparse(value)} is neither a Code "
                       "member nor a name declared as a Code")
        callee = node.func.id if isinstance(node.func, ast.Name) else None
        if callee in positions and len(node.args) > positions[callee]:
            value = node.args[positions[callee]]
            if _is_text(value):
                yield f"{where}:{node.lineno}: {callee}(..., {ast.unparse(value)}, ...)"
    for node in ast.walk(tree):
        # exc.code == "bad_option", exc.code in ("a", "b")
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_code_attr(s) for s in sides):
                texts = [s for s in sides if _is_text(s)] + [
                    e for s in sides if isinstance(s, ast.Tuple | ast.List | ast.Set)
                    for e in s.elts if _is_text(e)]
                if texts:
                    yield f"{where}:{node.lineno}: {ast.unparse(node)}"
        # _FIELD_OF.get(exc.code) with _FIELD_OF = {"empty_text": ...}
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id in by_text
                and node.args and _is_code_attr(node.args[0])):
            yield f"{where}:{node.lineno}: {node.func.value.id} is keyed by strings, not Codes"


def test_every_error_code_in_the_package_is_a_code_member():
    assert len(PLUGINS) >= 4, PLUGINS  # reference, onnx, xtts, espeak
    found = [p for path in SOURCES
             for p in problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("source", "expected"), [
    ('HostError("m", code="bad_option")', "code='bad_option'"),
    ('HostError("m", code=f"bad_{x}")', "is neither a Code"),
    ('HostError("m", code=Code.NO_SUCH_MEMBER)', "is neither a Code"),
    ("HostError('m', code=code)", "is neither a Code"),
    ("def f(code: str = 'x'): pass", "parameter code of f is not a Code"),
    ("def f(code: Code = 'x'): pass", "defaults to a string"),
    ("def f(m, code: Code): pass\ndef g(): f('m', 'x')", "f(..., 'x', ...)"),
    ("def f(m, code: Code): pass\ndef g(v): f('m', 'a' if v else Code.B)", "f(..., 'a' if"),
    ("def g(e):\n    return e.code == 'bad_option'", "e.code == 'bad_option'"),
    ("def g(e):\n    return e.code in ('a', 'b')", "e.code in ('a', 'b')"),
    ("M = {'empty_text': 'text'}\ndef g(e):\n    return M.get(e.code)", "keyed by strings"),
])
def test_the_check_finds_string_codes(source, expected):
    found = list(problems(source, "probe.py"))
    assert any(expected in p for p in found), found


@pytest.mark.parametrize("source", [
    'def g():\n    raise HostError("m", code=Code.BAD_OPTION)',
    "def f(m, code: Code = Code.BAD_OPTION):\n    return HostError(m, code=code)",
    "def g(e):\n    c: Code = TABLE.get(e, Code.HTTP_ERROR)\n    return HostError('m', code=c)",
    "def g(e):\n    return e.code == Code.BAD_OPTION",
])
def test_the_check_accepts_code_members(source):
    assert list(problems(source, "probe.py")) == []
