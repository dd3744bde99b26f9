"""The Modal backend's reading and deleting of a run's files on its outputs volume: prm's
metadata (plan, status, attempt logs), prime-rl's run directory (metrics, rollouts,
checkpoints), the listings `prm pull` fetches by, and what `prm rm` / `prm prune` delete.
ModalBackend (modal_backend.py) is these plus launching, following and stopping."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import modal
from modal.types import FileEntryType

from primerl_modal.backends.base import RunEntry
from primerl_modal.backends.modal_client import MISSING, connect, modal_errors, volume
from primerl_modal.backends.modal_files import ModalSource
from primerl_modal.core.cleanup import inside_run, own_paths, sweep_path
from primerl_modal.core.logs import LogLine, merged, parse_attempt_log
from primerl_modal.core.plan import META_DIR
from primerl_modal.core.selection import RemoteFile
from primerl_modal.run_index import RunRecord, SweepRecord
from primerl_modal.transfer import Source


class ModalRunFiles:
    """A run's files on its outputs volume (connects to Modal on first use)."""

    def _volume(self, name: str) -> modal.Volume:
        return volume(name)

    def _read(self, volume: str, path: str) -> bytes | None:
        try:
            return b"".join(self._volume(volume).read_file(path))
        except MISSING:
            return None

    def read_sweep_meta(self, sweep: SweepRecord, name: str) -> bytes | None:
        connect()
        with modal_errors():
            return self._read(sweep.outputs, f"{META_DIR}/sweeps/{sweep.sweep_id}/{name}")

    def read_meta(self, record: RunRecord, name: str) -> bytes | None:
        connect()
        with modal_errors():
            return self._read(record.outputs, f"{META_DIR}/{record.run_id}/{name}")

    def read_run_file(self, record: RunRecord, rel: str) -> bytes | None:
        connect()
        with modal_errors():
            return self._read(record.outputs, f"{record.run_id}/{rel}")

    def list_run_dir(self, record: RunRecord, rel: str = "") -> list[RunEntry] | None:
        connect()
        with modal_errors():
            try:
                entries = self._volume(record.outputs).listdir(
                    f"{record.run_id}/{rel}".rstrip("/"))
            except MISSING:
                return None
        return sorted((RunEntry(Path(e.path).name, e.type == FileEntryType.DIRECTORY, e.size)
                       for e in entries), key=lambda e: e.name)

    def stored_logs(self, record: RunRecord) -> Iterator[LogLine]:
        connect()
        with modal_errors():
            volume = self._volume(record.outputs)
            try:
                entries = volume.listdir(f"{META_DIR}/{record.run_id}/logs")
            except MISSING:
                return
            # a cluster's other nodes log beside rank 0, each in logs/node<rank>/
            nodes = [e.path for e in entries if e.type == FileEntryType.DIRECTORY
                     and Path(e.path).name.removeprefix("node").isdigit()]
            logs = [self._attempt_logs(volume, entries)]
            logs += [self._attempt_logs(volume, volume.listdir(node)) for node in nodes]
            yield from (merged(logs) if nodes else logs[0])

    @staticmethod
    def _attempt_logs(volume: modal.Volume, entries: list[Any]) -> list[LogLine]:
        attempts = sorted((int(num), e.path) for e in entries
                          if (num := Path(e.path).stem.removeprefix("attempt_")).isdigit())
        lines: list[LogLine] = []
        for n, path in attempts:
            text = b"".join(volume.read_file(path)).decode("utf-8", "replace")
            lines += parse_attempt_log(text, n)
        return lines

    def file_stream(self, record: RunRecord,
                    keep: Callable[[RemoteFile], bool]) -> tuple[AsyncIterator[RemoteFile],
                                                                 ModalSource]:
        """The run's files as the listing arrives (run on the source's loop), so the first
        downloads start before the listing ends, as `modal volume get` does."""
        connect()
        source = ModalSource(self._volume(record.outputs))
        roots = ((record.run_id, ""), (f"{META_DIR}/{record.run_id}", "_prm/"))
        return source.listing(roots, keep), source

    def files(self, record: RunRecord) -> tuple[list[RemoteFile], Source]:
        connect()
        volume = self._volume(record.outputs)
        items = []
        with modal_errors():
            for root, prefix in ((record.run_id, ""), (f"{META_DIR}/{record.run_id}", "_prm/")):
                try:  # one call for the whole listing, not a round trip per entry
                    entries = volume.listdir(root, recursive=True)
                except MISSING:
                    continue
                for e in entries:
                    if e.type == FileEntryType.FILE:
                        rel = e.path.lstrip("/").removeprefix(root).lstrip("/")
                        items.append(RemoteFile(e.path, prefix + rel, e.size, float(e.mtime)))
        return items, ModalSource(volume)

    def remove_run(self, record: RunRecord) -> None:
        self._remove(record.outputs, own_paths(record.run_id))

    def remove_run_paths(self, record: RunRecord, rels: list[str]) -> None:
        run_dir = own_paths(record.run_id)[0]
        self._remove(record.outputs, [f"{run_dir}/{inside_run(rel)}" for rel in rels])

    def remove_sweep(self, sweep: SweepRecord) -> None:
        self._remove(sweep.outputs, [sweep_path(sweep.sweep_id)])

    def _remove(self, outputs: str, paths: Sequence[str]) -> None:
        """Delete files or folders (whole) of the volume; one already gone is fine."""
        connect()
        with modal_errors():
            volume = self._volume(outputs)
            for path in paths:
                with contextlib.suppress(*MISSING):
                    volume.remove_file(path, recursive=True)

