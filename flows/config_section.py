"""The base of every flow-config section (unknown keys are errors, a loaded config is frozen) and the
amounts the sections share."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NonNegMoney = Annotated[Decimal, Field(ge=0, max_digits=24, decimal_places=12)]
PositiveAmount = Annotated[Decimal, Field(gt=0, max_digits=24, decimal_places=12)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
