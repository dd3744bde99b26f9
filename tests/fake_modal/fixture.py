"""Pytest fixture ``fake_modal``: one server per session, reset for every test.

Use it from a test module or conftest with ``from fake_modal.fixture import fake_modal``
(re-export it) or ``pytest_plugins = ["fake_modal.fixture"]``. A test fails at teardown when
the fake recorded an internal error or received an RPC it does not implement (`check_clean`).
Retry delays run at `RETRY_DELAY_SCALE` of the policy's (a 10 s delay takes 0.1 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake import FakeModal

RETRY_DELAY_SCALE = 0.01


def check_clean(fake: FakeModal) -> None:
    """Fail the test if the fake recorded errors (bugs of the fake, unimplemented RPCs);
    they are cleared either way, so that each is reported once."""
    errors, fake.errors[:], fake.unimplemented[:] = list(fake.errors), [], []
    if errors:
        pytest.fail("the fake Modal server recorded errors:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture(scope="session")
def _fake_modal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeModal]:
    fake = FakeModal(root=tmp_path_factory.mktemp("fake_modal")).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_modal(
    _fake_modal_server: FakeModal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeModal]:
    """A running `FakeModal` rooted at ``tmp_path``, with ``os.environ`` pointing modal at it."""
    from modal.client import _Client

    fake = _fake_modal_server
    fake.reset(root=tmp_path)
    fake.retry_delay_scale = RETRY_DELAY_SCALE
    cached = _Client._client_from_env  # modal reuses one client per process: not another server's
    if cached is not None and cached.server_url != fake.url:
        _Client._set_env_client(None)
    for key in list(os.environ):
        if key.startswith("MODAL_"):
            monkeypatch.delenv(key)
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    yield fake
    fake.end_calls()  # errors of the calls' last moments count too
    try:
        check_clean(fake)
    finally:
        fake.reset()
