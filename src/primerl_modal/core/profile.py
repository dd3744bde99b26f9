"""Find, load and resolve profiles: files, `extends` parents, CLI flags and `--set`.

Resolution order (later wins): built-in defaults < the root parent ... < the profile
< CLI flags < `--set`. Every leaf remembers which layer set it (``sources``).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from primerl_modal.core import schema
from primerl_modal.core.durations import parse_duration
from primerl_modal.errors import ProfileError

DEFAULT_PROFILE = "reverse-text"
CONFIG_KEYS = ("config", "trainer_config", "orchestrator_config", "inference_config")


@dataclass(frozen=True)
class Setting:
    """One value set by a layer above the profile files: a CLI flag or `--set`."""

    key: str  # dotted, normalised (see normalise_key)
    value: Any
    source: str  # e.g. "--gpus" or "--set"


@dataclass(frozen=True)
class SearchPath:
    """Where profile names are looked up, in order (DESIGN: path, ./configs, home, shipped)."""

    cwd: Path
    home_profiles: Path
    packaged: Path

    def candidates(self, name: str) -> list[Path]:
        file = name if name.endswith(".toml") else f"{name}.toml"
        return [self.cwd / "configs" / file, self.home_profiles / file, self.packaged / file]


@dataclass(frozen=True)
class ResolvedProfile:
    name: str  # the file stem, or what the user typed
    path: Path
    chain: tuple[Path, ...]  # root parent first, the profile itself last
    data: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)  # dotted leaf -> layer label

    def get(self, dotted: str) -> Any:
        section, _, rest = dotted.partition(".")
        node: Any = self.data.get(section)
        if not rest:
            return node
        if type(node) is dict and "." not in rest:  # the common section.key
            return node.get(rest)
        node = self.data
        for part in dotted.split("."):
            if type(node) is not dict or part not in node:  # tables are plain dicts
                return None
            node = node[part]
        return node


def find_profile(name: str, search: SearchPath) -> Path:
    """The file a profile name or path refers to.

    Raises ProfileError listing every place tried when there is none.
    """
    as_path = Path(name).expanduser()
    if not as_path.is_absolute():
        as_path = search.cwd / as_path
    looks_like_path = "/" in name or name.endswith(".toml")
    if looks_like_path and as_path.is_file():
        return as_path
    tried = [as_path] if looks_like_path else []
    if "/" not in name:
        for candidate in search.candidates(name):
            if candidate.is_file():
                return candidate
            tried.append(candidate)
    if as_path.is_dir():
        raise ProfileError(f"profile {name!r} is a folder ({as_path}), not a profile file",
                           _folder_hint(as_path))
    shown = ", ".join(str(p) for p in tried)
    raise ProfileError(
        f"profile {name!r} not found (tried {shown})",
        "pass a path to a .toml file, or run `prm init NAME` to write one",
    )


def _folder_hint(folder: Path) -> str:
    first = min(folder.glob("*.toml"), default=None)
    return f"name a .toml file in it, e.g. {first}" if first else "name a .toml file"


def read_utf8(path: Path) -> str:
    """A text file's contents; what is not UTF-8 is named by byte offset and line.

    Raises ProfileError (a folder, an unreadable file, bytes that are not UTF-8).
    """
    if path.is_dir():
        raise ProfileError(f"{path} is a folder, not a file", _folder_hint(path))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProfileError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProfileError(f"{path}: {not_utf8(e)}", "save the file as UTF-8") from None


def not_utf8(e: UnicodeDecodeError) -> str:
    """Where decoding stopped: the byte, its offset and its line."""
    data = bytes(e.object)
    line = data.count(b"\n", 0, e.start) + 1
    return f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} (line {line})"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; a syntax error names file:line:column.

    Raises ProfileError (see read_utf8).
    """
    text = read_utf8(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise toml_error(str(path), e) from None


def toml_error(where: str, e: tomllib.TOMLDecodeError) -> ProfileError:
    """``file:line:column: invalid TOML: reason`` with the fix."""
    msg = str(e)
    at = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    loc = f"{where}:{at.group(1)}:{at.group(2)}" if at else where
    reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg) or "syntax error"
    return ProfileError(f"{loc}: invalid TOML: {reason}", "fix the file's syntax")


def _check_sections(path: Path, data: Mapping[str, Any]) -> None:
    for section, value in data.items():
        if section == "extends":
            if not isinstance(value, str):
                raise ProfileError(f"{path}: extends must be a string path, got {value!r}")
            continue
        if section not in schema.SECTIONS:
            raise ProfileError(
                f"{path}: unknown section [{section}]{_did_you_mean(section, schema.SECTIONS)}",
                f"sections are: {', '.join(schema.SECTIONS)}",
            )
        if not isinstance(value, dict):
            raise ProfileError(f"{path}: {section} must be a table like [{section}]")
        if section in schema.FREE_SECTIONS:
            continue
        known = schema.keys_of(section)
        for key in value:
            if key not in known:
                raise ProfileError(
                    f"{path}: unknown key {key!r} in [{section}]{_did_you_mean(key, known)}",
                    f"keys of [{section}]: {', '.join(known)}",
                )


def load_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The profile and its `extends` parents, root parent first.

    Raises ProfileError for a missing parent, a malformed file or a cycle (naming it).
    """
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: list[Path] = []
    current: Path | None = path.resolve()
    while current is not None:
        if current in seen:
            cycle = " -> ".join(p.name for p in [*seen[seen.index(current) :], current])
            raise ProfileError(f"extends cycle: {cycle}", "remove one of these extends lines")
        seen.append(current)
        data = read_toml(current)
        _check_sections(current, data)
        chain.append((current, data))
        parent = data.get("extends")
        if parent is None:
            current = None
            continue
        nxt = (current.parent / Path(parent).expanduser()).resolve()
        if not nxt.is_file():
            raise ProfileError(
                f"{current}: extends {parent!r} but {nxt} "
                + ("is a folder" if nxt.is_dir() else "does not exist"),
                "extends paths are relative to the file that names them",
            )
        current = nxt
    chain.reverse()
    return chain


def normalise_key(key: str) -> str:
    """`--set` key to the dotted form stored in a profile: ``gpu.trainer-ratio`` ->
    ``gpu.trainer_ratio``; plain prime-rl keys go under ``overrides``.

    Raises ProfileError for an unknown prm key or a malformed key.
    """
    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key):
        raise ProfileError(
            f"--set key {key!r} is not a dotted name",
            "write it like trainer.optim.lr=3e-6 or gpu.count=8",
        )
    head, _, rest = key.partition(".")
    head = head.replace("-", "_")
    if head == "env" and rest:
        return f"env.{rest}"
    if head == "overrides" and rest:
        return f"overrides.{rest.replace('-', '_')}"
    if head in schema.SECTIONS and head not in schema.FREE_SECTIONS:
        name = rest.replace("-", "_")
        known = schema.keys_of(head)
        if name not in known:
            raise ProfileError(
                f"unknown prm key {key!r}{_did_you_mean(name, known)}",
                f"keys of [{head}]: {', '.join(known)}",
            )
        return f"{head}.{name}"
    return "overrides." + key.replace("-", "_")


def parse_set(item: str) -> Setting:
    """``KEY=VALUE`` from `--set`: VALUE is read as a TOML literal, else kept as a string.

    Raises ProfileError when there is no ``=`` or the key is malformed.
    """
    key, eq, raw = item.partition("=")
    if not eq or not key.strip():
        raise ProfileError(
            f"--set {item!r} has no '='", "write --set KEY=VALUE, e.g. --set trainer.optim.lr=3e-6"
        )
    try:
        value: Any = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return Setting(normalise_key(key.strip()), value, "--set")


def is_local_path(value: str) -> bool:
    """Config paths starting with ./, ../, / or ~ are local files prm uploads; anything
    else is a path inside the prime-rl checkout."""
    return value.startswith(("./", "../", "/", "~"))


def _anchor_paths(table: dict[str, Any], base: Path) -> dict[str, Any]:
    """Local paths in [prime_rl] made absolute against ``base`` (the directory of the
    file that wrote them, or the working directory for CLI flags)."""
    if "prime_rl" not in table and "local" not in table:
        return table
    out = dict(table)
    for name, always in (("prime_rl", {"local_code"}), ("local", {"prime_rl_dir", "outputs_dir"})):
        section = table.get(name)
        if not isinstance(section, Mapping):
            continue
        fixed = dict(section)
        for key, value in section.items():
            if not isinstance(value, str):
                continue
            if key in always or (key in CONFIG_KEYS and is_local_path(value)):
                fixed[key] = str((base / Path(value).expanduser()).resolve())
        out[name] = fixed
    return out


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _merge(dst: dict[str, Any], src: dict[str, Any], label: str, sources: dict[str, str],
           prefix: str = "") -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        old = dst.get(key)
        if isinstance(value, dict):
            if not isinstance(old, dict):
                dst[key] = old = {}
            _merge(old, value, label, sources, dotted + ".")
        else:
            if isinstance(old, dict):  # a table replaced by a value: forget its leaves
                for stale in [s for s in sources if s.startswith(dotted + ".")]:
                    del sources[stale]
            dst[key] = value
            sources[dotted] = label


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    if head == "env":  # env names keep their dots and case
        return {"env": {rest: value}}
    return {head: _nest(rest, value)} if rest else {head: value}


def resolve(name: str, search: SearchPath, settings: Sequence[Setting] = ()) -> ResolvedProfile:
    """Load profile ``name`` with its parents and apply CLI settings on top.

    Raises ProfileError (see find_profile, load_chain, validate).
    """
    path = find_profile(name, search)
    chain = load_chain(path)
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    _merge(data, schema.defaults(), "default", sources)
    for file, content in chain:
        body = {k: v for k, v in content.items() if k != "extends"}
        _merge(data, _anchor_paths(body, file.parent), _label(file, search), sources)
    data.setdefault("experiment", {})
    if not data["experiment"].get("name"):
        data["experiment"]["name"] = path.stem
        sources["experiment.name"] = "file name"
    base = ResolvedProfile(path.stem, path, tuple(p for p, _ in chain), data, sources)
    validate(base)
    return with_settings(base, settings, search.cwd)


def _set_leaf(data: dict[str, Any], dotted: str, value: Any, label: str,
              sources: dict[str, str]) -> None:
    """What merging ``_nest(dotted, value)`` does for a plain value, without building it."""
    head, _, rest = dotted.partition(".")
    parts = [head, rest] if head == "env" else dotted.split(".")  # env names keep their dots
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            node[part] = child = {}
        node = child
    if isinstance(node.get(parts[-1]), dict):  # a table replaced by a value: forget its leaves
        for stale in [k for k in sources if k.startswith(dotted + ".")]:
            del sources[stale]
    node[parts[-1]] = value
    sources[dotted] = label


def _copy_tables(value: Any) -> Any:
    """A copy of nested tables (dicts); values themselves are shared, never mutated."""
    return {k: _copy_tables(v) for k, v in value.items()} if isinstance(value, dict) else value


def with_settings(profile: ResolvedProfile, settings: Sequence[Setting],
                  cwd: Path) -> ResolvedProfile:
    """``profile`` with CLI (or sweep trial) settings on top; only the sections they touch
    are copied, so a sweep can layer thousands of trials on one resolved base.

    Raises ProfileError for a value of the wrong type.
    """
    if not settings:
        return profile
    keys = {s.key for s in settings}
    touched = {k.partition(".")[0] for k in keys}
    data = {k: (_copy_tables(v) if k in touched else v) for k, v in profile.data.items()}
    sources = dict(profile.sources)
    if keys & {"gpu.count", "gpu.trainer_ratio"} and not keys & {"gpu.trainer", "gpu.inference"}:
        # A new count or ratio on the command line replaces an explicit split from a file.
        data["gpu"] = dict(data.get("gpu", {}))
        for k in ("trainer", "inference"):
            data["gpu"].pop(k, None)
            sources.pop(f"gpu.{k}", None)
    for s in settings:
        if isinstance(s.value, dict) or s.key.startswith(("prime_rl.", "local.")):
            _merge(data, _anchor_paths(_nest(s.key, s.value), cwd), s.source, sources)
        else:
            _set_leaf(data, s.key, s.value, s.source, sources)
    resolved = ResolvedProfile(profile.name, profile.path, profile.chain, data, sources)
    validate(resolved, touched)
    return resolved


def _label(file: Path, search: SearchPath) -> str:
    for base, tag in ((search.packaged, "shipped:"), (search.cwd, "")):
        try:
            return tag + str(file.relative_to(base.resolve()))
        except ValueError:
            pass
    return str(file)


_KIND_CHECK = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str_list": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "duration": lambda v: isinstance(v, str | int) and not isinstance(v, bool),
}
_KIND_WORD = {
    "str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
    "str_list": "a list of strings", "duration": "a duration like \"6h\"",
}
_SECRET_PARTS = {"KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIALS"}


def validate(profile: ResolvedProfile, sections: set[str] | None = None) -> None:
    """Check every known key's type (of ``sections`` only, when given) and the [env] table.

    Raises ProfileError naming the key and the layer that set it.
    """
    for dotted, key in schema.BY_DOTTED.items():
        if not key.section or (sections is not None and key.section not in sections):
            continue
        value = profile.get(dotted)
        if value is None:
            continue
        if not _KIND_CHECK[key.kind](value):
            where = profile.sources.get(dotted, "profile")
            raise ProfileError(
                f"{where}: [{key.section}] {key.name} must be {_KIND_WORD[key.kind]}, "
                f"got {value!r}"
            )
        if key.kind == "duration":
            parse_duration(value, what=f"[{key.section}] {key.name}")
    env = profile.get("env") or {}
    for name, value in env.items():
        where = profile.sources.get(f"env.{name}", "profile")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ProfileError(f"{where}: [env] {name!r} is not a valid variable name")
        if _SECRET_PARTS & set(name.upper().split("_")):
            raise ProfileError(
                f"{where}: [env] {name} looks like a secret and would be stored in plain text",
                f"put it in a Modal secret (modal secret create NAME {name}=...) "
                "and list NAME in [modal] secrets, or pass --env " + name,
            )
        if not isinstance(value, str | int | float | bool):
            raise ProfileError(f"{where}: [env] {name} must be a string, got {value!r}")
