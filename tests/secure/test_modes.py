"""The plaintext warning: logged where plaintext runs, once only where the command already showed it."""

from __future__ import annotations

import logging
import threading

import pytest

from secure.modes import PLAINTEXT_WARNING, plaintext_warning_shown, warn_if_plaintext

log = logging.getLogger("tests.secure.modes")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_plaintext_is_logged_and_other_modes_are_not(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert warn_if_plaintext("plaintext", log)
        assert not warn_if_plaintext("ckks", log)
        assert not warn_if_plaintext("secagg+", log)
    assert _warnings(caplog) == [PLAINTEXT_WARNING]


def test_not_logged_again_where_the_command_showed_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        with plaintext_warning_shown():
            with plaintext_warning_shown():  # nested
                assert not warn_if_plaintext("plaintext", log)
            assert not warn_if_plaintext("plaintext", log)
            # the federation's threads see it too
            seen: list[bool] = []
            t = threading.Thread(target=lambda: seen.append(warn_if_plaintext("plaintext", log)))
            t.start()
            t.join()
            assert seen == [False]
        assert _warnings(caplog) == []
        assert warn_if_plaintext("plaintext", log)  # after the block: logged again
    assert _warnings(caplog) == [PLAINTEXT_WARNING]


def test_the_block_closes_on_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(RuntimeError), plaintext_warning_shown():
        raise RuntimeError("run failed")
    with caplog.at_level(logging.WARNING):
        assert warn_if_plaintext("plaintext", log)
