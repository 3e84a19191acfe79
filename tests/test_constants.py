"""The node daemon and dvic_log keep their own copies of protocol facts (one file, stdlib, Python 3.8):
they must stay equal to dvic_core/constants.py, which the server, the `dvic` client and the installer
import."""

from __future__ import annotations

import logging

import dvic_node
import pytest
from dvic_log import _format

from central import release
from dvic_core import constants


def test_daemon_speaks_the_server_protocol_version() -> None:
    assert dvic_node.PROTOCOL == constants.PROTOCOL_VERSION


def test_daemon_levels_and_sources_are_the_servers() -> None:
    assert dvic_node.LEVELS == constants.LEVELS
    assert dvic_node.SOURCES == constants.LOG_SOURCES
    # Every alias the daemon accepts lands on a level the server stores.
    assert set(dvic_node.LEVEL_ALIASES.values()) <= set(constants.LEVELS)


def test_daemon_close_codes_are_the_servers() -> None:
    assert dvic_node.CLOSE_REVOKED == constants.CLOSE_REVOKED
    assert dvic_node.CLOSE_REPLACED == constants.CLOSE_REPLACED


def test_dvic_log_levels_are_the_servers() -> None:
    assert _format.LEVELS == constants.LEVELS
    # The stored numbers are Python logging's, which dvic_log maps names through.
    assert constants.LEVEL_NUMBERS == {name: getattr(logging, name) for name in constants.LEVELS}
    assert list(constants.LEVEL_NUMBERS) == list(constants.LEVELS)


@pytest.mark.parametrize("text", ["0.1.0", "0.2.10", "1.0rc1", "10", "", "x.y", "2.0.0.1", "1..2"])
def test_daemon_compares_versions_as_the_server(text: str) -> None:
    assert dvic_node.parse_version(text) == release.parse_version(text)

