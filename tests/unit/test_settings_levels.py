"""``CONCORD_LOG_LEVEL`` takes any case; an unknown level stops the service at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.settings import Settings


@pytest.mark.parametrize("given", ["warning", "WARNING", " Warning "])
def test_a_log_level_in_any_case_is_understood(given: str) -> None:
    assert Settings(CONCORD_LOG_LEVEL=given).log_level == "WARNING"


def test_an_unknown_log_level_is_refused() -> None:
    with pytest.raises(ValidationError, match="CRITICAL"):
        Settings(CONCORD_LOG_LEVEL="loud")
