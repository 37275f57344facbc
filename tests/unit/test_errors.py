"""The error catalogue: one root, unique codes, HTTP statuses, messages from docstrings."""

from __future__ import annotations

import re

import pytest

from clarion.domain import errors
from clarion.domain.errors import ClarionError

# Only the classes defined here: others imported in the same session must not change the answer.
ERRORS = sorted(
    (
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, ClarionError)
    ),
    key=lambda cls: cls.__name__,
)
ids = [cls.__name__ for cls in ERRORS]


def test_the_module_defines_the_whole_documented_tree() -> None:
    documented = {
        "ClarionError",
        "InvalidRequest",
        "MalformedJson",
        "BodyTooLarge",
        "UnknownGroup",
        "UnknownCommunity",
        "TooManyRecipients",
        "NoRecipients",
        "IdempotencyKeyReused",
        "InvalidIdentifier",
        "InvalidFrame",
        "Unauthorized",
        "InvalidApiKey",
        "InvalidUserToken",
        "NotFound",
        "Conflict",
    }
    assert documented <= {cls.__name__ for cls in ERRORS}


def test_every_error_has_a_code_of_its_own() -> None:
    codes = [cls.code for cls in ERRORS]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("cls", ERRORS, ids=ids)
def test_every_code_is_snake_case(cls: type[ClarionError]) -> None:
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code)


@pytest.mark.parametrize("cls", ERRORS, ids=ids)
def test_every_error_has_a_4xx_or_5xx_status(cls: type[ClarionError]) -> None:
    assert isinstance(cls.status, int)
    assert 400 <= cls.status <= 599


@pytest.mark.parametrize("cls", ERRORS, ids=ids)
def test_every_error_has_a_docstring_of_its_own(cls: type[ClarionError]) -> None:
    assert cls.__dict__.get("__doc__")


@pytest.mark.parametrize("cls", ERRORS, ids=ids)
def test_the_default_message_is_the_first_line_of_the_docstring(
    cls: type[ClarionError],
) -> None:
    first_line = (cls.__doc__ or "").strip().splitlines()[0]
    error = cls()
    assert error.message == first_line
    assert str(error) == first_line
    assert error.details == {}


@pytest.mark.parametrize("cls", ERRORS, ids=ids)
def test_an_error_raised_with_a_message_carries_it_and_its_details(
    cls: type[ClarionError],
) -> None:
    error = cls("the group 'eng' does not exist", group="eng")
    assert error.message == "the group 'eng' does not exist"
    assert str(error) == error.message
    assert error.details == {"group": "eng"}


@pytest.mark.parametrize("cls", ERRORS, ids=ids)
def test_every_error_is_a_clarion_error(cls: type[ClarionError]) -> None:
    with pytest.raises(ClarionError):
        raise cls()


@pytest.mark.parametrize(
    ("cls", "parent", "status"),
    [
        (errors.UnknownGroup, errors.InvalidRequest, 422),
        (errors.InvalidIdentifier, errors.InvalidRequest, 422),
        (errors.MalformedJson, errors.InvalidRequest, 400),
        (errors.InvalidFrame, errors.InvalidRequest, 400),
        (errors.InvalidApiKey, errors.Unauthorized, 401),
        (errors.InvalidUserToken, errors.Unauthorized, 401),
        (errors.GroupKindMismatch, errors.Conflict, 409),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_an_error_sits_under_its_family_with_its_status(
    cls: type[ClarionError], parent: type[ClarionError], status: int
) -> None:
    assert issubclass(cls, parent)
    assert cls.status == status


def test_the_root_is_an_internal_error() -> None:
    assert (ClarionError.code, ClarionError.status) == ("internal", 500)


def test_not_found_is_a_404() -> None:
    assert errors.NotFound.status == 404
