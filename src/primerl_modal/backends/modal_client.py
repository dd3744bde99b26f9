"""Where prm meets the Modal client: the token, a bounded first contact with the server,
volumes of the version prm needs, and Modal's exceptions turned into one-line PrmErrors.

Modal's client retries a server it cannot reach for about a minute, silently; prm makes
its first contact in a daemon thread under a spinner and gives up after a bounded wait, so
an unreachable Modal is one line, never a minute of silence."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import modal
import modal.exception

from primerl_modal.errors import PrmError
from primerl_modal.ui import console

# A missing volume path: the client raises the builtin for it, the server NotFoundError.
MISSING = (FileNotFoundError, modal.exception.NotFoundError)
SECRET_KEYS = {"wandb": "WANDB_API_KEY", "huggingface": "HF_TOKEN"}
VOLUME_VERSION = 2  # no inode limit, many concurrent writers of distinct files
CONNECT_TIMEOUT_S = 15.0
TIMEOUT_ENV = "PRM_MODAL_TIMEOUT"
_reached: set[str] = set()


@contextlib.contextmanager
def modal_errors() -> Iterator[None]:
    """Modal's exceptions as one-line PrmErrors with the fix."""
    try:
        yield
    except modal.exception.AuthError as e:
        raise PrmError(f"Modal refused the token ({e})",
                       "run `modal setup` to log in again") from None
    except modal.exception.NotFoundError as e:
        text = str(e)
        secret = next((name for name in _quoted(text)), None)
        if "Secret" in text and secret:
            key = SECRET_KEYS.get(secret, "KEY")
            raise PrmError(
                f"Modal secret {secret!r} does not exist",
                f"create it with `modal secret create {secret} {key}=...`, or remove it from "
                "[modal] secrets",
            ) from None
        raise PrmError(f"Modal: {text}") from None
    except modal.exception.InvalidError as e:
        if "has version" in str(e) and (names := _quoted(str(e))):
            raise wrong_volume_version(names[0]) from None
        raise PrmError(f"Modal: InvalidError: {e}") from None
    except modal.exception.ConnectionError as e:
        raise unreachable(f"cannot reach Modal ({e})") from None
    except modal.exception.Error as e:
        raise PrmError(f"Modal: {type(e).__name__}: {e}") from None


def _quoted(text: str) -> list[str]:
    parts = text.split("'")
    return [parts[i] for i in range(1, len(parts), 2)]


def wrong_volume_version(name: str) -> PrmError:
    return PrmError(
        f"Modal volume {name!r} is not a v{VOLUME_VERSION} volume, which prm needs (many "
        "writers, no file-count limit)",
        f"create one with `modal volume create --version {VOLUME_VERSION} NEW-NAME` and set "
        "[modal] outputs_volume or cache_volume to NEW-NAME (the old volume is left as it is)",
    )


def unreachable(what: str) -> PrmError:
    url = os.environ.get("MODAL_SERVER_URL")
    where = f"MODAL_SERVER_URL is set to {url}" if url else "MODAL_SERVER_URL is not set"
    return PrmError(what, f"check this machine's network and proxy ({where})")


def require_token() -> None:
    """Fail at once, without touching the network, when no Modal token is configured."""
    from modal.config import config

    if not (config.get("token_id") and config.get("token_secret")):
        raise PrmError("no Modal token is configured",
                       "run `modal setup` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)")


def connect_timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV) or CONNECT_TIMEOUT_S)
    except ValueError:
        raise PrmError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is not a number of seconds",
                       f"set e.g. {TIMEOUT_ENV}=30") from None


def connect() -> None:
    """A token, and a Modal server that answers within the bounded wait (once a process).

    Raises PrmError under `prm --offline`, which opens no connection at all."""
    from primerl_modal.prices import offline

    if offline():
        raise PrmError("--offline: prm opens no connection to Modal",
                       "drop --offline (or unset PRM_OFFLINE) to reach Modal")
    require_token()
    from modal.config import config

    url = str(config.get("server_url"))
    if url in _reached:
        return
    timeout = connect_timeout()
    failure: list[BaseException] = []

    def hello() -> None:
        try:
            modal.Client.from_env().hello()
        except BaseException as e:  # noqa: BLE001 - reported by the waiting thread
            failure.append(e)

    thread = threading.Thread(target=hello, name="prm-modal-hello", daemon=True)
    thread.start()
    thread.join(0.5)
    if thread.is_alive():
        with console.err().status(f"connecting to Modal ({url})"):
            thread.join(timeout - 0.5)
    if thread.is_alive():
        raise unreachable(f"Modal did not answer within {timeout:g} s ({url})")
    if failure:
        if not isinstance(failure[0], modal.exception.Error):
            raise unreachable(f"cannot reach Modal at {url} "
                              f"({type(failure[0]).__name__}: {failure[0]})")
        with modal_errors():
            raise failure[0]
    _reached.add(url)


def volume(name: str) -> modal.Volume:
    """A volume of the version prm needs, created on first use (no network call here: a
    wrong version is reported where the volume is first used, through modal_errors)."""
    return modal.Volume.from_name(name, create_if_missing=True, version=VOLUME_VERSION)
