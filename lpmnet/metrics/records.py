"""One subject's metrics of one fusion method, as the workflow's metrics job writes them (no pandas, no torch).

:func:`write_metrics_json` stores a :func:`lpmnet.metrics.compute_all` result::

    {"subject": "sub-01", "method": "lpmnet",
     "conventions": {"lpmnet":   {"values": {"SSIM": 0.71, ...}, "slices_used": {"SSIM": null, ...}},
                     "standard": {"values": {...}, "slices_used": {...}}}}

The file is strict JSON: an undefined metric (NaN) is written ``null``; an infinite value (PSNR of a fused
volume equal to both sources) is written as the string ``"inf"`` / ``"-inf"``. :func:`read_metrics_json`
turns both back into floats; :func:`metrics_record` gives the long table's rows (:mod:`lpmnet.evaluation.tables`).
"""

from __future__ import annotations

import math
from pathlib import Path

from lpmnet.errors import InputError
from lpmnet.volumes.io import atomic_write_json, read_json_object
from lpmnet.metrics import METRIC_NAMES


def _parts(result) -> tuple[dict, dict, dict]:
    """(values, slices_used, notes) of a MetricSet or of its dict form."""
    if hasattr(result, "values") and hasattr(result, "slices_used") and not isinstance(result, dict):
        return dict(result.values), dict(result.slices_used or {}), dict(getattr(result, "notes", None) or {})
    if isinstance(result, dict) and "values" in result:
        return dict(result["values"]), dict(result.get("slices_used") or {}), dict(result.get("notes") or {})
    raise TypeError(f"expected a MetricSet or a dict with 'values', got {type(result).__name__}")


def metric_order(names) -> list[str]:
    """``names`` in :data:`METRIC_NAMES` order, unknown names last (alphabetically)."""
    known = [m for m in METRIC_NAMES if m in names]
    return known + sorted(n for n in names if n not in METRIC_NAMES)


def _check_label(value, what: str) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "\t\r\n"):
        raise ValueError(f"{what} must be a non-empty string without tabs or newlines, got {value!r}")
    return value


def _slices(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def metrics_record(subject: str, method: str, results: dict) -> list[dict]:
    """Long rows ``{subject, method, convention, metric, value, slices_used, note}`` of a ``compute_all`` result.

    ``results`` maps convention -> :class:`lpmnet.metrics.MetricSet` (or its ``to_dict()`` /
    JSON form ``{"values": ..., "slices_used": ...}``).  Rows follow the conventions' order in
    ``results`` and :data:`METRIC_NAMES` order (unknown metric names last, alphabetically);
    ``value`` is a float (NaN when undefined), ``slices_used`` an int or None, ``note`` why a value is
    undefined ("" otherwise).
    """
    _check_label(subject, "subject")
    _check_label(method, "method")
    rows = []
    for convention, result in results.items():
        _check_label(convention, "convention")
        values, used, notes = _parts(result)
        for metric in metric_order(values):
            value = values[metric]
            rows.append({
                "subject": subject,
                "method": method,
                "convention": convention,
                "metric": metric,
                "value": float("nan") if value is None else float(value),
                "slices_used": _slices(used.get(metric)),
                "note": notes.get(metric, ""),
            })
    return rows


def _encode(value):
    if value is None:
        return None
    v = float(value)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _decode(value, path, where):
    if value is None:
        return float("nan")
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "+inf", "infinity"):
            return float("inf")
        if value.strip().lower() in ("-inf", "-infinity"):
            return float("-inf")
        if value.strip().lower() == "nan":
            return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(path, f"{where}: expected a number or null, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise InputError(path, f"{where}: expected a number or null, got {value!r}") from None


def write_metrics_json(path, subject: str, method: str, results: dict) -> Path:
    """Write one subject's metrics for one method as strict JSON, atomically; returns the path.

    ``results``: a :func:`lpmnet.metrics.compute_all` result (convention -> MetricSet).  NaN is
    written ``null``, +/-inf as ``"inf"`` / ``"-inf"``.
    """
    _check_label(subject, "subject")
    _check_label(method, "method")
    conventions = {}
    for convention, result in results.items():
        _check_label(convention, "convention")
        values, used, notes = _parts(result)
        order = metric_order(values)
        conventions[convention] = {
            "values": {m: _encode(values[m]) for m in order},
            "slices_used": {m: _slices(used.get(m)) for m in order},
            "notes": {m: str(notes[m]) for m in order if notes.get(m)},
        }
    doc = {"subject": subject, "method": method, "conventions": conventions}
    return atomic_write_json(path, doc, nan_as_null=True)


def read_metrics_json(path) -> dict:
    """Read a file of :func:`write_metrics_json`: same structure, values as floats (NaN for null).

    Raises :class:`InputError` naming the file when it is missing, not JSON, or malformed.
    """
    p = Path(path)
    doc = read_json_object(p, "metrics file")
    for key in ("subject", "method"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise InputError(p, f"missing or empty {key!r}")
    convs = doc.get("conventions")
    if not isinstance(convs, dict) or not convs:
        raise InputError(p, "missing or empty 'conventions'")
    out = {"subject": doc["subject"], "method": doc["method"], "conventions": {}}
    for convention, entry in convs.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("values"), dict):
            raise InputError(p, f"convention {convention!r}: missing 'values'")
        used = entry.get("slices_used") or {}
        if not isinstance(used, dict):
            raise InputError(p, f"convention {convention!r}: 'slices_used' must be an object")
        values = {m: _decode(v, p, f"{convention}.{m}") for m, v in entry["values"].items()}
        slices = {}
        for m in values:
            s = used.get(m)
            if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or s != int(s)):
                raise InputError(p, f"{convention}.slices_used.{m}: expected an integer or null, got {s!r}")
            slices[m] = None if s is None else int(s)
        notes = entry.get("notes") or {}
        if not isinstance(notes, dict) or not all(isinstance(n, str) for n in notes.values()):
            raise InputError(p, f"convention {convention!r}: 'notes' must map metrics to strings")
        out["conventions"][convention] = {"values": values, "slices_used": slices, "notes": dict(notes)}
    return out


# --------------------------------------------------------------------------- tables
