"""The flow config's checks across sections, and how a bad config is explained."""

from __future__ import annotations

import re

import pytest

from flows.config import ConfigError
from tests.conftest import flow_settings


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (
            {"sampling.window_s": 300},
            r"^  windows\.size_s: must be a multiple of sampling\.window_s \(300\), got 60$",
        ),
        (
            {"sampling.allowed_lateness_s": 60, "windows.judge_allowed_lateness_s": 30},
            r"^  windows\.judge_allowed_lateness_s: must be at least sampling\.allowed_lateness_s"
            r" \(60\), got 30$",
        ),
    ],
)
def test_the_estimates_windows_must_hold_whole_sampler_windows_and_wait_as_long(overrides, error):
    """Otherwise an event late for the estimates' window need not be late for its sampler window,
    and its design counts could not leave the estimates with its verdicts (`operators.sample_tally`)."""
    with pytest.raises(ConfigError) as raised:
        flow_settings(**overrides)
    assert len(str(raised.value).splitlines()) == 2
    assert re.match(error, str(raised.value).splitlines()[1])
    flow_settings(**{"sampling.window_s": 30, "windows.size_s": 120})  # a multiple: fine
