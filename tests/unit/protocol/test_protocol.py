from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from gateway.protocol.inbound import Limits, Notification, SetData
from gateway.protocol.timestamps import iso_timestamp


def test_timestamps_match_javascript_to_iso_string() -> None:
    moment = datetime(2023, 6, 15, 12, 34, 56, 789_999, tzinfo=UTC)
    assert iso_timestamp(moment) == "2023-06-15T12:34:56.789Z"


def test_set_data_patch_keeps_extra_fields_and_skips_nulls() -> None:
    message = SetData.model_validate({"username": None, "status": "away", "following": ["a", "a"]})
    assert message.patch() == {"status": "away", "following": ["a"]}


def test_strict_types_do_not_coerce() -> None:
    with pytest.raises(ValidationError):
        SetData.model_validate({"username": 12})


def test_limits_come_from_the_context() -> None:
    with pytest.raises(ValidationError, match="at most 1"):
        Notification.model_validate(
            {"type": "t", "content": {}, "targets": ["a", "b"]}, context=Limits(max_targets=1)
        )
