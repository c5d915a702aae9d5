"""Several versions behind one server: aliases, the default, a canary share and a shadow.

A `Fleet` maps alias labels to `GraphSource`s (each follows its own `NAME@ALIAS` and hot-reloads
when it moves). `route` picks the alias that answers a request: the one the request pins (header
`X-Steerpatch-Alias` or query parameter `alias`), else the canary for its share of un-pinned
requests, else the default. The shadow alias runs beside the default on the default's requests; it
never answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerpatch.errors import SteerpatchError

ALIAS_HEADER = "x-steerpatch-alias"
ALIAS_QUERY = "alias"


class FleetError(SteerpatchError):
    """A fleet that cannot be set up as asked (unknown alias, canary share outside 0-1); exit code 2."""


@dataclass(frozen=True)
class Canary:
    """Send `fraction` of un-pinned requests to `alias`."""

    alias: str
    fraction: float


def parse_canary(text: str) -> Canary:
    """`ALIAS=FRACTION` -> `Canary`.

    Raises:
        FleetError: for a missing `=`, a non-number, or a fraction outside 0-1.

    Example:
        >>> parse_canary("candidate=0.1")
        Canary(alias='candidate', fraction=0.1)
    """
    alias, sep, value = text.partition("=")
    if not sep or not alias:
        raise FleetError(f"--canary {text!r} is not ALIAS=FRACTION; e.g. --canary candidate=0.1")
    try:
        fraction = float(value)
    except ValueError:
        raise FleetError(f"--canary {text!r}: {value!r} is not a number; give a fraction between 0 and 1") from None
    if not 0.0 <= fraction <= 1.0:
        raise FleetError(f"--canary {text!r}: fraction {fraction:g} is outside 0-1; e.g. --canary {alias}=0.1")
    return Canary(alias, fraction)


def parse_canaries(texts: str | list[str] | tuple[str, ...] | None) -> Canary | None:
    """The one canary of a server from its `--canary ALIAS=FRACTION` options (click gives a repeated option as a tuple).

    A repeated option is refused rather than the last one kept: a repeated alias names both values,
    and two aliases are refused because one server routes one canary (their total share is said
    when it is above 1).

    Raises:
        FleetError: for a bad `ALIAS=FRACTION` (`parse_canary`), a repeated alias, or a second alias.

    Example:
        >>> parse_canaries(("candidate=0.1",))
        Canary(alias='candidate', fraction=0.1)
    """
    canaries = [parse_canary(text) for text in ((texts,) if isinstance(texts, str) else texts or ())]
    if len(canaries) > 1:
        first = canaries[0]
        later = next((c for c in canaries[1:] if c.alias == first.alias), canaries[1])
        if later.alias == first.alias:
            raise FleetError(f"--canary {first.alias!r} is given twice ({first.fraction:g} and {later.fraction:g}); "
                             f"give each canary alias once, e.g. --canary {first.alias}={later.fraction:g}")
        total = sum(c.fraction for c in canaries)
        over = f" (total share {total:g} is above 1)" if total > 1 else ""
        raise FleetError(f"--canary is given for two aliases, {first.alias!r} ({first.fraction:g}) and "
                         f"{later.alias!r} ({later.fraction:g}){over}; one server has one canary: give --canary once")
    return canaries[0] if canaries else None


def pinned_alias(headers: list[str], query: list[str], path: str | None = None) -> str | None:
    """The alias a request pins, from its `X-Steerpatch-Alias` headers, `?alias=` values and (KServe) path.

    An empty header is no pin (as before); identical repeats are one pin. Two different pins are
    refused rather than resolved by an order of precedence the client cannot see.

    Raises:
        BadPayload: 400 naming both values when the request pins two different aliases.

    Example:
        >>> pinned_alias(["candidate"], ["candidate"])
        'candidate'
    """
    pins = [("path", path)] if path is not None else []
    pins += [("header X-Steerpatch-Alias", value) for value in headers if value]
    pins += [("query parameter alias", value) for value in query]
    for where, value in pins[1:]:
        if value != pins[0][1]:
            from steerpatch.errors import shown_value
            from steerpatch.serve.payload import BadPayload

            raise BadPayload(f"the request pins two aliases: {shown_value(pins[0][1])} ({pins[0][0]}) and "
                             f"{shown_value(value)} ({where}); send one alias", 400)
    return pins[0][1] if pins else None


def parse_alias(name: str | None, text: str) -> tuple[str, str]:
    """`LABEL` (served as `NAME@LABEL`) or `LABEL=FILE_OR_REF` -> (label, source).

    Raises:
        FleetError: for an empty label, or a bare label without a NAME to resolve it against.
    """
    label, sep, source = text.partition("=")
    if not label or (sep and not source):
        raise FleetError(f"--alias {text!r} is not LABEL or LABEL=FILE.onnx|NAME@ALIAS")
    if sep:
        return label, source
    if not name:
        raise FleetError(f"--alias {text!r} needs a registered NAME to resolve {text}@... against (or LABEL=FILE.onnx)")
    return label, f"{name}@{label}"


class Fleet:
    """The aliases one server answers for.

    Args:
        sources: label -> `GraphSource`, in the order given.
        default: the label un-pinned requests go to (default: the first).
        canary: a `Canary` taking a share of un-pinned requests, or None.
        shadow: a label run beside the default and compared with it, or None.
        name: the served model name (the KServe model name; default: the default alias's source).
        seed: seed of the canary draw (tests make it reproducible).

    Raises:
        FleetError: for a default, canary or shadow that is not one of the labels, or the same as the default.
    """

    def __init__(self, sources: dict[str, Any], default: str | None = None, canary: Canary | None = None,
                 shadow: str | None = None, name: str | None = None, seed: int | None = None) -> None:
        if not sources:
            raise FleetError("serve at least one alias or graph file")
        self.sources = dict(sources)
        self.default = default or next(iter(self.sources))
        served = ", ".join(self.sources)
        for flag, label in (("--default-alias", self.default), ("--canary", canary.alias if canary else None),
                            ("--shadow", shadow)):
            if label is not None and label not in self.sources:
                raise FleetError(f"{flag} {label!r} is not a served alias; served: {served} (add it with --alias {label})")
        for flag, label in (("--canary", canary.alias if canary else None), ("--shadow", shadow)):
            if label == self.default:
                raise FleetError(f"{flag} {label!r} is the default alias; pick another served alias ({served})")
        self.canary = canary
        self.shadow = shadow
        self.name = name or _model_name(self.sources[self.default].source)
        self._random = random.Random(seed)

    @classmethod
    def open(cls, name: str | None, aliases: list[str], *, default: str | None = None,
             canary: str | list[str] | tuple[str, ...] | None = None,
             shadow: str | None = None, tracking_uri: str | None = None, poll_seconds: float = 5.0,
             threads: int | None = None) -> Fleet:
        """Open every alias (`LABEL` as `NAME@LABEL`, or `LABEL=FILE|REF`); the fleet's model name is NAME.

        `canary` is one `ALIAS=FRACTION`, or the `--canary` options as given (`parse_canaries`).

        `threads` is each session's intra-op thread count (`steerpatch.serve.batching.ort_threads`).

        Raises:
            FleetError: for a bad alias, canary or shadow; RegistryError/CompileError when a graph cannot load.
        """
        from steerpatch.serve.source import GraphSource

        parsed = [parse_alias(name, text) for text in aliases]
        labels = [label for label, _ in parsed]
        if len(set(labels)) != len(labels):
            raise FleetError(f"--alias labels must differ; got {', '.join(labels)}")
        canary_spec = parse_canaries(canary)
        sources = {label: GraphSource(src, tracking_uri=tracking_uri, poll_seconds=poll_seconds, threads=threads)
                   for label, src in parsed}
        return cls(sources, default=default, canary=canary_spec, shadow=shadow, name=name)

    @classmethod
    def single(cls, source: Any) -> Fleet:
        """A fleet of one `GraphSource`, labelled by its alias (`NAME@ALIAS`) or `default` (a file)."""
        from steerpatch.refs import parse_ref

        label = parse_ref(source.source)[1] if source.follows else "default"
        return cls({label: source})

    def route(self, pinned: str | None) -> str:
        """The label that answers: the pinned one, else the canary for its share, else the default.

        Raises:
            BadPayload: 400 for a pinned label this server does not serve.
        """
        if pinned is not None:
            if pinned not in self.sources:
                from steerpatch.errors import shown_value
                from steerpatch.serve.payload import BadPayload

                raise BadPayload(f"alias {shown_value(pinned)} is not served here; served aliases: {', '.join(self.sources)} "
                                 "(header X-Steerpatch-Alias or query parameter alias)", 400)
            return pinned
        if self.canary is not None and self._random.random() < self.canary.fraction:
            return self.canary.alias
        return self.default

    def start(self) -> None:
        for source in self.sources.values():
            source.start()

    def stop(self) -> None:
        for source in self.sources.values():
            source.stop()

    def describe(self) -> dict[str, Any]:
        """The routing, for `/health`: aliases with their versions, default, canary and shadow."""
        return {
            "default": self.default,
            "canary": {"alias": self.canary.alias, "fraction": self.canary.fraction} if self.canary else None,
            "shadow": self.shadow,
            "aliases": {label: source.health() for label, source in self.sources.items()},
        }


def _model_name(source: str) -> str:
    from steerpatch.refs import split_ref

    parts = split_ref(source)
    if parts is not None and not source.endswith(".onnx"):
        return parts[0]
    return Path(source).stem
