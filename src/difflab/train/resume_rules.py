"""Which configuration changes a resumed run may carry.

A resumed run must be the run its checkpoint started: the same data, network, process, objective,
optimizer and seed. Only keys that cannot change what is learnt at a given step may differ between
the checkpoint and the command that resumes it (:data:`RESULT_NEUTRAL`); any other difference is
refused by name (``docs/runs.md``).
"""

from __future__ import annotations

from typing import Any

# section.key (or a whole section) that may change on resume. The run length extends or shortens
# training (the cosine learning rate then follows the new length from the resumed step on);
# the others only change how often things are written or how fast the CPU works.
RESULT_NEUTRAL: tuple[str, ...] = (
    "name",
    "train.steps",
    "train.max_minutes",
    "train.log_every",
    "train.ckpt_every",
    "train.sample_every",
    "train.keep_checkpoints",
    "train.threads",
    "sample",
    "eval",
)

__all__ = ["RESULT_NEUTRAL", "config_changes", "describe_changes"]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _neutral(key: str) -> bool:
    return any(key == n or key.startswith(n + ".") for n in RESULT_NEUTRAL)


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` for every key that differs and may not change on resume."""
    a, b = _flatten(saved), _flatten(now)
    changed = []
    for key in sorted(set(a) | set(b)):
        if _neutral(key) or key not in a or key not in b:  # a key added since: at its default
            continue
        old, new = a[key], b[key]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
        if (float(old) != float(new)) if numbers else old != new:
            changed.append((key, old, new))
    return changed


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """``"train.lr 0.002 -> 0.001, model.channels 32 -> 64"``."""
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes)
