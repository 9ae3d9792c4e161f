"""What determines a model, as one stable hash: the code (lakeloop's package and a user's family
module, file by file), the configuration sections that shape a model, and the pinned dependency set.
Pure: the caller reads the files; here they are hashed, compared and described."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# The configuration that shapes a model; everything else (where things run, storage, serving,
# monitoring, maintenance) is runtime and changes no model.
MODEL_SECTIONS = ("dataset", "train", "tune")
# Keys inside those sections that say how to run, not what to learn.
RUNTIME_KEYS = frozenset(
    {
        "train.num_workers",
        "train.rows_per_worker",
        "train.cpus_per_worker",
        "train.local_mode_rows",
        "train.use_gpu",
        "train.placement_strategy",
        "train.max_failures",
        "train.cache_rows",
        "train.storage_path",
        "tune.max_concurrent_trials",
    }
)
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


@dataclass(frozen=True)
class CodeManifest:
    files: dict[str, str]  # path (relative to its package's parent) -> sha256 of the bytes
    pins: dict[str, str]  # distribution (normalised) -> pinned version
    conf: dict[str, str]  # dotted key of MODEL_SECTIONS -> its value as JSON

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> CodeManifest:
        data = json.loads(text)
        return cls(dict(data["files"]), dict(data["pins"]), dict(data["conf"]))


def build_manifest(files: Mapping[str, bytes], constraints: str, config: Mapping[str, Any]) -> CodeManifest:
    """`files`: path -> contents; `constraints`: a pip constraints file's text; `config`: the whole
    configuration as JSON-ready data (runtime sections and keys are left out here)."""
    hashed = {path: hashlib.sha256(data).hexdigest() for path, data in sorted(files.items())}
    shaping = {section: config[section] for section in MODEL_SECTIONS if section in config}
    conf = {k: v for k, v in flatten(shaping).items() if k not in RUNTIME_KEYS}
    return CodeManifest(hashed, parse_pins(constraints), conf)


def parse_pins(text: str) -> dict[str, str]:
    """`name==version` lines of a requirements/constraints file (extras, markers and comments dropped),
    names normalised as pip compares them."""
    pins = {}
    for line in text.splitlines():
        found = _PIN.match(line)
        if found:
            pins[re.sub(r"[-_.]+", "-", found.group(1)).lower()] = found.group(2)
    return dict(sorted(pins.items()))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; every leaf (lists included) as canonical JSON."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=str)
    return flat


def changes(old: CodeManifest, new: CodeManifest) -> list[str]:
    """What differs from `old` to `new`, one line per file, pin or configuration key."""
    lines = []
    for kind, before, after in (("file", old.files, new.files), ("pin", old.pins, new.pins)):
        for name in sorted(before.keys() | after.keys()):
            if name not in before:
                lines.append(f"{kind} {name}: added" + (f" ({after[name]})" if kind == "pin" else ""))
            elif name not in after:
                lines.append(f"{kind} {name}: removed")
            elif before[name] != after[name]:
                detail = (
                    f"{before[name]} -> {after[name]}" if kind == "pin" else f"{before[name][:8]} -> {after[name][:8]}"
                )
                lines.append(f"{kind} {name}: {detail}")
    for key in sorted(old.conf.keys() | new.conf.keys()):
        before, after = old.conf.get(key, "(unset)"), new.conf.get(key, "(unset)")
        if before != after:
            lines.append(f"conf {key}: {before} -> {after}")
    return lines
