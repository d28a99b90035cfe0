"""The boundary where a request body becomes vLLM's request object.

vLLM's request models check a body in validators that run before pydantic
checks its fields' types (`mode="before"`), and those validators assume the
fields' shapes: a `tool_choice` that is a list, or `structured_outputs` that
is a string, raises a TypeError or KeyError instead of a validation error.
vLLM's own rejections (`VLLMValidationError`) are not ValueErrors either, so
pydantic lets them through too. Left alone, both reach the server's
catch-all as 500s. Whatever goes wrong while a body is validated is the
body's fault: `checked_body` turns it into a `BodyRejected` (400, or 404 for
vLLM's not-found), naming the field when the field can be found.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Optional

from pydantic import BaseModel, TypeAdapter, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from vllm.exceptions import VLLMClientError, VLLMNotFoundError, VLLMValidationError

from shardserve.serve.http.errors import describe_validation_errors

# What vLLM's validators raise on a body of the wrong shape.
_SHAPE_ERRORS = (TypeError, KeyError, AttributeError, IndexError, OverflowError)


class BodyRejected(Exception):
    """A body vLLM's request model refused; not a ValueError, so pydantic passes it on."""

    def __init__(self, message: str, param: Optional[str] = None, status_code: int = 400):
        super().__init__(message)
        self.message, self.param, self.status_code = message, param, status_code


def checked_body(model: type[BaseModel]) -> Any:
    """`model` as a route's body type, with its validation's crashes turned into `BodyRejected`."""
    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except VLLMClientError as exc:
            raise _from_vllm(exc) from exc
        except _SHAPE_ERRORS as exc:
            found = find_wrong_field(model, value)
            if found is None:
                raise BodyRejected(f"request body is malformed ({exc})") from exc
            raise BodyRejected(*found) from exc

    return Annotated[model, WrapValidator(validate)]


def _from_vllm(exc: VLLMClientError) -> BodyRejected:
    message = str(exc.args[0]) if exc.args else str(exc)
    if isinstance(exc, VLLMNotFoundError):
        return BodyRejected(message, status_code=404)
    return BodyRejected(message, exc.parameter if isinstance(exc, VLLMValidationError) else None)


def find_wrong_field(model: type[BaseModel], value: Any) -> Optional[tuple[str, Optional[str]]]:
    """(message, field) for the first field of `value` whose own type check
    fails, checked alone, without the model's validators; None when each
    passes (or `value` is not an object)."""
    if not isinstance(value, dict):
        return None
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in value:
            continue
        try:
            _field_adapter(model, name).validate_python(value[key])
        except ValidationError as err:
            errors = [{**error, "loc": (key, *error["loc"])} for error in err.errors()]
            return describe_validation_errors(errors)
    return None


@functools.cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    field = model.model_fields[name]
    if not field.metadata:
        return TypeAdapter(field.annotation or Any)
    # The field alone, with its constraints: Annotated[type, *metadata].
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)])  # type: ignore[arg-type]
