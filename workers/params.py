"""Job parameters arrive as JSON from the ledger; every job validates them the same way."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from common.errors import ValidationError

ParamsModel = TypeVar("ParamsModel", bound=BaseModel)


def parse_params(params: dict[str, Any], model: type[ParamsModel]) -> ParamsModel:
    """Validate job parameters, reporting every problem in one line (a PermanentError: no retry)."""
    try:
        return model.model_validate(params)
    except PydanticValidationError as exc:
        raise ValidationError(
            [f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()]
        ) from None
