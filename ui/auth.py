"""Password login for `rillet serve`: where the credential comes from, and wrong guesses slowed down.

The credential is `user:password`, from (first found) `--auth`, `--auth-file PATH` (its first line) or the
environment variable `RILLET_AUTH`; a file or the environment keeps it out of `ps`, where every local
user sees a command line.

Every client (its IP address) gets `FREE_ATTEMPTS` wrong passwords for a user name; after that it must
wait before the next attempt is even checked, twice as long after each further wrong one (1 s, 2 s, 4 s,
... at most 5 minutes); an attempt made too early is refused unchecked. Across all user names a client
gets four times as many. A right password clears the count of that client and name. Nothing sleeps:
refusing early costs the server nothing, and the clock is injectable so tests need no waiting.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbone.errors import InvalidRequest

log = logging.getLogger(__name__)

FREE_ATTEMPTS = 5
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 300.0
ENV_VAR = "RILLET_AUTH"
AUTH_MESSAGE = (f"After {FREE_ATTEMPTS} wrong passwords, each further attempt from your address has to wait, "
                "longer each time (up to 5 minutes).")

CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("rillet_client", default="unknown")


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """`user:password` as a credentials pair."""
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise InvalidRequest("--auth takes user:password, both non-empty (for example --auth ada:s3cret).")
    return user, password


def read_credential(auth: str | None, auth_file: Path | str | None, environ: dict[str, str] | None = None
                    ) -> tuple[tuple[str, str] | None, list[str]]:
    """The credential in force and warnings for the user: `--auth`, else the file's first line, else
    RILLET_AUTH. `ValueError` saying what is wrong with the one given."""
    environ = os.environ if environ is None else environ
    warnings = []
    if auth:
        if environ.get(ENV_VAR) != auth:
            warnings.append("--auth on the command line is visible to every user of this machine (ps); "
                            f"prefer --auth-file or the environment variable {ENV_VAR}.")
        return parse_auth(auth), warnings
    if auth_file:
        path = Path(auth_file).expanduser()
        try:
            first = path.read_text(encoding="utf-8").splitlines()[:1]
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"Cannot read the credential file {path}: {exc}") from None
        if not first:
            raise InvalidRequest(f"The credential file {path} is empty; write user:password on its first line.")
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(f"{path} can be read by other users; `chmod 600 {path}` keeps the password yours.")
        try:
            return parse_auth(first[0].strip()), warnings
        except ValueError:
            raise InvalidRequest(f"The first line of {path} must be user:password, both non-empty.") from None
    if environ.get(ENV_VAR):
        try:
            return parse_auth(environ[ENV_VAR]), warnings
        except ValueError:
            raise InvalidRequest(f"{ENV_VAR} must be user:password, both non-empty.") from None
    return None, warnings


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0

    def wait_until(self, free: int) -> float:
        if self.failures < free:
            return 0.0
        return self.last_failure + min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** min(self.failures - free, 30))


class LoginThrottle:
    """Gradio's `auth` callable, throttled per client and user name: for one `user:password`, or for the
    accounts of the database (`verify(name, password)`)."""

    def __init__(self, user: str | None = None, password: str | None = None, *,
                 verify: Callable[[str, str], bool] | None = None, clock: Callable[[], float] = time.monotonic,
                 free_attempts: int = FREE_ATTEMPTS) -> None:
        if verify is None and not (user and password):
            raise ValueError("LoginThrottle needs a user and password, or verify")
        self.user, self.password = user, password
        self.verify = verify or self._matches
        self.clock, self.free = clock, free_attempts
        self._records: dict[tuple[str, str | None], _Record] = {}
        self._lock = threading.Lock()

    def __call__(self, username: str, password: str) -> bool:
        return self.attempt(CLIENT.get(), username, password)

    def attempt(self, client: str, username: str, password: str) -> bool:
        """Whether this login succeeds; False unchecked while the client must wait."""
        now = self.clock()
        keys = [((client, username), self.free), ((client, None), 4 * self.free)]
        with self._lock:
            self._forget_old(now)
            records = [(self._records.setdefault(key, _Record()), free) for key, free in keys]
            if any(now < record.wait_until(free) for record, free in records):
                log.warning("login of %r from %s refused: too many wrong passwords, wait", username, client)
                return False
        right = self.verify(username, password)  # outside the lock: a password hash takes a while
        with self._lock:
            records = [(self._records.setdefault(key, _Record()), free) for key, free in keys]
            if right:
                self._records.pop((client, username), None)
                return True
            for record, _ in records:
                record.failures += 1
                record.last_failure = now
            log.warning("wrong password for %r from %s (%d in a row)", username, client, records[0][0].failures)
            return False

    def _matches(self, username: str, password: str) -> bool:
        assert self.user is not None and self.password is not None
        return hmac.compare_digest(username.encode(), self.user.encode()) & \
            hmac.compare_digest(password.encode(), self.password.encode())

    def seconds_to_wait(self, client: str, username: str) -> float:
        now = self.clock()
        with self._lock:
            ends = [self._records[key].wait_until(free) for key, free in
                    (((client, username), self.free), ((client, None), 4 * self.free)) if key in self._records]
        return max([0.0, *(end - now for end in ends)])

    def _forget_old(self, now: float) -> None:
        """Records of clients quiet for longer than the longest wait (the dictionary stays small)."""
        if len(self._records) > 10_000:
            self._records = {k: r for k, r in self._records.items() if now - r.last_failure < 2 * MAX_DELAY_S}


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


API_KEY_NAME = "(API key)"  # the throttle's user name for API key attempts


def _missing_key() -> Exception:
    from ui.openai_schema import ApiError

    return ApiError(401, "This server needs an API key: send `Authorization: Bearer KEY` (the OpenAI clients' "
                    "api_key). `rillet users key NAME` makes one.", type="authentication_error",
                    code="missing_api_key")


def _wrong_key() -> Exception:
    from ui.openai_schema import ApiError

    return ApiError(401, "Wrong API key (or too many wrong ones from your address: wait and try again). "
                    "`rillet users key NAME` makes a new one.", type="authentication_error", code="invalid_api_key")


def api_access(throttle: LoginThrottle | None) -> Callable[[str | None, str], str | None]:
    """How the OpenAI-compatible API checks its callers without accounts. Without a credential, everyone who
    reaches the port (a loopback one) may use it; with `user:password`, the API key is the password,
    throttled like the page."""

    def check(authorization: str | None, client: str) -> str | None:
        if throttle is None:
            return None
        token = bearer_token(authorization)
        if token is None:
            raise _missing_key()
        if not throttle.attempt(client, throttle.user or "", token):
            raise _wrong_key()
        return None

    return check


def key_access(accounts: Any, throttle: LoginThrottle) -> Callable[[str | None, str], str | None]:
    """How the API checks its callers on a server with accounts: each user's own API keys (memory/users.py),
    wrong ones slowed down per client by `throttle` (whose `verify` takes the key as the password)."""

    def check(authorization: str | None, client: str) -> str | None:
        token = bearer_token(authorization)
        if token is None:
            raise _missing_key()
        if not throttle.attempt(client, API_KEY_NAME, token):
            raise _wrong_key()
        user = accounts.user_for_key(token)
        if user is None:  # revoked between the two looks
            raise _wrong_key()
        return user.name

    return check


def account_throttles(accounts: Any, clock: Callable[[], float] = time.monotonic) -> tuple[LoginThrottle,
                                                                                             LoginThrottle]:
    """The page's login and the API's key check over the accounts of a database."""
    page = LoginThrottle(verify=lambda name, password: accounts.check_password(name, password) is not None,
                         clock=clock)
    keys = LoginThrottle(verify=lambda _, key: accounts.user_for_key(key) is not None, clock=clock)
    return page, keys


class RememberClient:
    """ASGI middleware: the client's address, for the login check Gradio calls with name and password only."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = CLIENT.set(str(client[0]) if client else "unknown")
        try:
            await self.app(scope, receive, send)
        finally:
            CLIENT.reset(token)
