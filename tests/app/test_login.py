"""`rillet serve`'s login: wrong passwords slowed per client and user (an injectable clock, no sleeping),
and the credential from a file or the environment instead of the command line."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from ui.auth import ENV_VAR, FREE_ATTEMPTS, LoginThrottle, read_credential


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_wrong_passwords_must_wait_longer_each_time() -> None:
    clock = Clock()
    throttle = LoginThrottle("ada", "s3cret", clock=clock)
    for _ in range(FREE_ATTEMPTS):
        assert not throttle.attempt("10.0.0.1", "ada", "guess")
    assert not throttle.attempt("10.0.0.1", "ada", "s3cret")  # too early: refused without being checked
    assert throttle.seconds_to_wait("10.0.0.1", "ada") == pytest.approx(1.0)
    assert throttle.attempt("10.0.0.2", "ada", "s3cret")  # another client is not held back
    clock.now += 1.0
    assert not throttle.attempt("10.0.0.1", "ada", "guess again")
    assert throttle.seconds_to_wait("10.0.0.1", "ada") == pytest.approx(2.0)  # twice as long
    for wait in (2.0, 4.0, 8.0, 16.0):
        clock.now += wait
        assert not throttle.attempt("10.0.0.1", "ada", "still guessing")
    assert throttle.seconds_to_wait("10.0.0.1", "ada") == pytest.approx(32.0)
    clock.now += 31.0
    assert not throttle.attempt("10.0.0.1", "ada", "s3cret")
    clock.now += 1.0
    assert throttle.attempt("10.0.0.1", "ada", "s3cret")  # the right one, once the wait is over
    assert throttle.seconds_to_wait("10.0.0.1", "ada") == 0.0  # and the count starts again
    for _ in range(10_000):  # the waits never pass five minutes
        clock.now += 300.0
        throttle.attempt("10.0.0.3", "bob", "x")
    assert throttle.seconds_to_wait("10.0.0.3", "bob") == pytest.approx(300.0)


def test_guessing_across_user_names_is_slowed_too() -> None:
    clock = Clock()
    throttle = LoginThrottle("ada", "s3cret", clock=clock)
    for i in range(4 * FREE_ATTEMPTS):
        assert not throttle.attempt("10.0.0.1", f"user{i}", "pw")
    assert not throttle.attempt("10.0.0.1", "ada", "s3cret")
    clock.now += 1.0
    assert throttle.attempt("10.0.0.1", "ada", "s3cret")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_server_slows_a_client_that_guesses(make_engine: Any, tiny: Any) -> None:
    from ui.server import launch

    clock = Clock()
    throttle = LoginThrottle("ada", "s3cret", clock=clock)
    port = free_port()
    demo = launch(make_engine(tiny), "127.0.0.1", port, ("ada", "s3cret"), block=False, throttle=throttle)
    url = f"http://127.0.0.1:{port}/login"
    try:
        with httpx.Client(timeout=30) as client:
            def login(password: str) -> int:
                return client.post(url, data={"username": "ada", "password": password}).status_code

            assert [login(f"wrong {i}") for i in range(FREE_ATTEMPTS)] == [400] * FREE_ATTEMPTS
            assert login("s3cret") == 400  # this client must wait now
            assert throttle.seconds_to_wait("127.0.0.1", "ada") == pytest.approx(1.0)
            clock.now += 1.0
            assert login("s3cret") == 200
    finally:
        demo.close()


def test_the_credential_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "credential"
    secret.write_text("ada:s3:cret\nignored\n")
    secret.chmod(0o600)
    assert read_credential(None, secret, {}) == (("ada", "s3:cret"), [])
    secret.chmod(0o644)
    credential, warnings = read_credential(None, secret, {})
    assert credential == ("ada", "s3:cret") and "can be read by other users" in warnings[0]
    assert read_credential(None, None, {ENV_VAR: "bob:pw"}) == (("bob", "pw"), [])
    assert read_credential("bob:pw", None, {ENV_VAR: "bob:pw"}) == (("bob", "pw"), [])  # typer's envvar path
    credential, warnings = read_credential("cy:pw", secret, {ENV_VAR: "bob:pw"})  # the command line wins
    assert credential == ("cy", "pw") and "visible to every user of this machine" in warnings[0]
    assert read_credential(None, None, {}) == (None, [])
    for bad, said in (("ada", "first line"), ("", "is empty")):
        secret.write_text(bad)
        with pytest.raises(ValueError, match=said):
            read_credential(None, secret, {})
    with pytest.raises(ValueError, match="Cannot read the credential file"):
        read_credential(None, tmp_path / "missing", {})
    with pytest.raises(ValueError, match=f"{ENV_VAR} must be user:password"):
        read_credential(None, None, {ENV_VAR: "nocolon"})


def test_serve_refuses_a_bad_credential_file_before_loading_anything(tmp_path: Path) -> None:
    secret = tmp_path / "credential"
    secret.write_text("just-a-name\n")
    result = CliRunner().invoke(cli, ["serve", "--auth-file", str(secret)])
    assert result.exit_code == 2 and "must be user:password" in " ".join(result.output.split())
