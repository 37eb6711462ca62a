"""`KernelSku`: what exactly runs, and what it promises about precision."""

from __future__ import annotations

import json
from typing import Mapping

import attrs


def _frozen_mapping(value) -> tuple:
    """Store dicts as sorted item tuples so SKUs stay hashable and compare by content."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze_value(v)) for k, v in value.items()))
    return tuple(value)


def _freeze_value(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze_value(v) for v in value)
    if isinstance(value, Mapping):
        return _frozen_mapping(value)
    return value


@attrs.frozen
class PrecisionGuarantee:
    """math_precision: the precision of the products (e.g. "f16", "bf16", "f64").
    accumulator: the precision of the sums.  deterministic: the same inputs give the same
    bits on the same device and SKU.  bit_stable: additionally, the bits do not depend on
    the batch composition or launch configuration (e.g. no split-kv reduction order changes)."""

    math_precision: str
    accumulator: str
    deterministic: bool
    bit_stable: bool


@attrs.frozen
class KernelSku:
    """One concrete kernel: the unit users pin and A/B-benchmark."""

    backend: str
    kernel: str
    arch: str
    dtype: str
    precision: PrecisionGuarantee
    config: tuple = attrs.field(default=(), converter=_frozen_mapping)
    workspace_bytes: int = 0
    versions: tuple = attrs.field(default=(), converter=_frozen_mapping)
    notes: str = ""

    @property
    def config_dict(self) -> dict:
        return dict(self.config)

    @property
    def versions_dict(self) -> dict:
        return dict(self.versions)

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "kernel": self.kernel,
            "arch": self.arch,
            "dtype": self.dtype,
            "precision": attrs.asdict(self.precision),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.config},
            "workspace_bytes": self.workspace_bytes,
            "versions": dict(self.versions),
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping) -> "KernelSku":
        try:
            fields = dict(data)
            fields["precision"] = PrecisionGuarantee(**fields["precision"])
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            names = [f.name for f in attrs.fields(cls)]
            raise ValueError(f"not a KernelSku ({type(exc).__name__}: {exc}); expected the fields {names} with "
                             f"precision = {[f.name for f in attrs.fields(PrecisionGuarantee)]}") from None

    @classmethod
    def from_json(cls, text: str) -> "KernelSku":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a KernelSku JSON text: {exc}") from None
        return cls.from_dict(data)

    def identity(self) -> tuple:
        """What must match for a pinned SKU to be 'the same kernel' (versions may differ)."""
        return (self.backend, self.kernel, self.arch, self.dtype, self.config)
