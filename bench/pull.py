"""Download throughput: `prm pull` against `modal volume get` (Modal's own CLI, the peer) on the
same files of the same volume, served by one fake Modal server on 127.0.0.1 and measured in the
same run. Budget (DESIGN.md): prm pull at least as fast as modal volume get, on both sets:

  small  2,000 files of 4 KiB   (a run's rollouts:    RUN/rollouts/step_N/sample_M.bin)
  large  4 files of 64 MiB      (a run's checkpoints: RUN/checkpoints/step_N/trainer/weights.bin)

Each figure is the median wall time of a whole CLI process (start, list, fetch, write) into a
fresh directory; the two tools alternate which goes first. Both downloads are checked byte for
byte (sha256 of every file) outside the timed region.

The kernel's listen-overflow count is printed too (system-wide): dropped connections would
stall both tools on retries and swamp the figures.

The defaults take about a minute and a half on a 2-core machine; for a quicker look:

    python bench/pull.py [--runs 3] [--small-files 2000] [--small-kib 4]
                         [--large-files 4] [--large-mib 64]
    python bench/pull.py --runs 1 --small-files 200 --large-mib 8
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_modal import FakeModal  # noqa: E402

from primerl_modal.run_index import FILE_NAME, RunIndex, RunRecord  # noqa: E402

BIN = Path(sys.executable).parent
VOLUME = "prime-rl-outputs"


@dataclass(frozen=True)
class FileSet:
    label: str
    run_id: str
    category: str  # the --only category, and the run's subdirectory holding the files
    files: dict[str, str]  # path relative to the run dir -> sha256 hex
    nbytes: int


def make_set(volume: Path, label: str, run_id: str, category: str,
             paths: list[str], size: int) -> FileSet:
    """Write ``paths`` (relative to the run dir) with ``size`` random bytes each."""
    files = {}
    for rel in paths:
        data = os.urandom(size)
        target = volume / run_id / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files[rel] = hashlib.sha256(data).hexdigest()
    return FileSet(label, run_id, category, files, size * len(paths))


def register(index: RunIndex, run_id: str) -> None:
    """The run as `prm run` would have left it in the index once finished."""
    now = time.time()
    index.upsert(RunRecord(
        run_id=run_id, name="bench", profile="reverse-text", backend="modal",
        status="SUCCEEDED", created_at=now - 3600, updated_at=now, gpu_type="H100", gpu_count=2,
        trainer=1, inference=1, tp=1, dp=1, usd_per_gpu_hour=3.95, timeout_s=86400, retries=0,
        outputs=VOLUME, meta_dir=f"/outputs/_prm/{run_id}", run_dir=f"/outputs/{run_id}",
        started_at=now - 3500, ended_at=now - 60, attempts=1, step=100, max_steps=100,
        metric="reward/mean", metric_value=0.5, exit_code=0,
    ))


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped from full listen queues (Linux), if known."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for keys, values in zip(lines[::2], lines[1::2], strict=False):
        if keys.startswith("TcpExt:"):
            row = dict(zip(keys.split(), values.split(), strict=True))
            return int(row["ListenOverflows"]) if "ListenOverflows" in row else None
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(tool: str, fileset: FileSet, dest: Path) -> None:
    """Every file of the set is under ``dest`` (run-dir layout) with the right bytes, and
    nothing else is."""
    got = {p.relative_to(dest).as_posix() for p in dest.rglob("*")
           if p.is_file() and p.name != ".prm-pull.json"}  # prm's record of what it wrote
    extra, missing = got - fileset.files.keys(), fileset.files.keys() - got
    assert not extra and not missing, (
        f"{tool}: {len(missing)} files missing, {len(extra)} unexpected "
        f"(e.g. {sorted(missing)[:2]} {sorted(extra)[:2]})")
    for rel, want in fileset.files.items():
        assert sha256_file(dest / rel) == want, f"{tool}: {rel} differs from the source"


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def fresh(path: Path) -> Path:
    """An empty directory at ``path``, with earlier downloads' dirty pages written back so
    they do not land in the next timed region."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.sync()
    return path


def measure(fileset: FileSet, runs: int, env: dict[str, str],
            work: Path) -> tuple[list[float], list[float]]:
    """Wall times of prm pull and of modal volume get, ``runs`` each, alternating order."""
    prm_times: list[float] = []
    modal_times: list[float] = []
    for i in range(runs):
        for tool in (("prm", "modal") if i % 2 == 0 else ("modal", "prm")):
            dest = fresh(work / f"{tool}-dest")
            if tool == "prm":
                argv = [str(BIN / "prm"), "pull", fileset.run_id, str(dest),
                        "--only", fileset.category]
                prm_times.append(timed(argv, env, work))
            else:
                # With an existing DEST, modal keeps the remote folder's name: DEST/<category>/.
                argv = [sys.executable, "-m", "modal", "volume", "get", VOLUME,
                        f"{fileset.run_id}/{fileset.category}", str(dest)]
                modal_times.append(timed(argv, env, work))
            verify(tool, fileset, dest)
    return prm_times, modal_times


def report(fileset: FileSet, prm_times: list[float], modal_times: list[float]) -> None:
    prm_s, modal_s = statistics.median(prm_times), statistics.median(modal_times)
    n, mb = len(fileset.files), fileset.nbytes / 1e6
    ratio = modal_s / prm_s
    print(f"{fileset.label}: {n:,} files, {mb:,.1f} MB")
    print(f"  modal volume get (peer)  median {modal_s:7.3f} s  {n / modal_s:9,.0f} files/s  "
          f"{mb / modal_s:8,.1f} MB/s")
    print(f"  prm pull                 median {prm_s:7.3f} s  {n / prm_s:9,.0f} files/s  "
          f"{mb / prm_s:8,.1f} MB/s  ratio {ratio:.2f} (modal/prm; budget >= 1.0: "
          f"{'ok' if ratio >= 1.0 else 'MISSED'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each tool per set")
    parser.add_argument("--small-files", type=int, default=2000)
    parser.add_argument("--small-kib", type=int, default=4)
    parser.add_argument("--large-files", type=int, default=4)
    parser.add_argument("--large-mib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prm-bench-pull-") as tmp_name:
        tmp = Path(tmp_name)
        fake = FakeModal(root=tmp / "fake").start()
        try:
            volume = fake.volume_path(VOLUME)
            sets = [
                make_set(volume, "small", "bench-small-260101-000000-aaaa", "rollouts",
                         [f"rollouts/step_{i // 100}/sample_{i:05d}.bin"
                          for i in range(args.small_files)], args.small_kib << 10),
                make_set(volume, "large", "bench-large-260101-000000-bbbb", "checkpoints",
                         [f"checkpoints/step_{(i + 1) * 10}/trainer/weights.bin"
                          for i in range(args.large_files)], args.large_mib << 20),
            ]
            home = tmp / "prm-home"
            index = RunIndex(home / FILE_NAME)
            for fileset in sets:
                register(index, fileset.run_id)
            index.close()
            env = {**os.environ, **fake.env(), "PRM_HOME": str(home)}
            work = tmp / "work"
            work.mkdir()
            measure(sets[0], 1, env, work)  # warm-up: imports and source files in the cache
            overflows_before = listen_overflows()
            results = [(s, *measure(s, args.runs, env, work)) for s in sets]
            overflows_after = listen_overflows()
        finally:
            fake.stop()
    overflows = ("unknown" if overflows_before is None or overflows_after is None
                 else f"{overflows_after - overflows_before:,}")
    print(f"median of {args.runs} run(s) each, same fake Modal server, files verified by sha256; "
          f"listen overflows (system-wide) while "
          f"timing: "
          f"{overflows}")
    for fileset, prm_times, modal_times in results:
        report(fileset, prm_times, modal_times)


if __name__ == "__main__":
    main()
