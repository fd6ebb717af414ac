"""The fast tier starts no servers: a test that tries to listen on a socket fails at once."""

import socket

import pytest


@pytest.fixture(autouse=True)
def no_listening_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, *args: object) -> None:
        raise RuntimeError("tests/unit starts no servers: move this test out of the fast tier")

    monkeypatch.setattr(socket.socket, "listen", refuse)
