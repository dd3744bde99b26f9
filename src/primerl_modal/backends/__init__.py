"""Where runs execute. Every backend offers the same small interface (base.Backend); only
backends/modal_backend.py imports modal."""

from __future__ import annotations

from primerl_modal.backends.base import Backend
from primerl_modal.errors import PrmError
from primerl_modal.run_index import RunIndex


def get_backend(name: str, index: RunIndex) -> Backend:
    """The backend called ``name``.

    Raises PrmError for an unknown name.
    """
    if name == "local":
        from primerl_modal.backends.local import LocalBackend

        return LocalBackend(index)
    if name == "modal":
        from primerl_modal.backends.modal_backend import ModalBackend

        return ModalBackend(index)
    raise PrmError(f"unknown backend {name!r}", "use modal or local")
