"""An error is not changed on its way up: whoever adds to it (a failed apply naming its commit)
gets a copy (``HostError.with_details``), and no module outside ``errors.py`` assigns to an
error's fields."""

from __future__ import annotations

import ast

from alltalk_host.apis.alltalk_fields import FieldError
from alltalk_host.errors import ApplyFailed, Code, Conflict

from .helpers import ROOT

FIELDS = {"details", "message", "code", "status"}


def test_with_details_is_a_copy_of_the_same_kind_with_details_added() -> None:
    raised = ApplyFailed("no", code=Code.MODEL_LOAD_FAILED, details={"model": "m"})
    copy = raised.with_details(commit="abc")
    assert type(copy) is ApplyFailed and copy is not raised
    assert (copy.message, copy.code, copy.status, str(copy)) == (
        "no", Code.MODEL_LOAD_FAILED, 422, "no")
    assert copy.details == {"model": "m", "commit": "abc"}
    assert raised.details == {"model": "m"}  # the raised one is as it was
    assert copy.__traceback__ is None and copy.__cause__ is None


def test_with_details_keeps_details_of_another_shape_and_subclasses_fields() -> None:
    assert Conflict("x").with_details(commit="c").details == {"commit": "c"}
    listed = ApplyFailed("x", details=["a", "b"]).with_details(commit="c")
    assert listed.details == {"commit": "c", "errors": ["a", "b"]}
    # A subclass whose __init__ takes other arguments is copied as it is.
    field = FieldError("voice", "bad voice").with_details(commit="c")
    assert isinstance(field, FieldError) and field.field == "voice"
    assert field.details == {"field": "voice", "commit": "c"}


def test_no_module_assigns_to_an_errors_fields() -> None:
    found = []
    for path in sorted((ROOT / "alltalk_host").rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "alltalk_host":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AugAssign) else [])
            for target in targets:
                if (isinstance(target, ast.Attribute) and target.attr in FIELDS
                        and not (isinstance(target.value, ast.Name)
                                 and target.value.id == "self")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"build a new error (HostError.with_details) instead: {found}"
