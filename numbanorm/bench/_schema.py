"""JSON Schemas (draft 2020-12) of the two files ``python -m numbanorm.bench`` writes.

- :data:`SCHEMA`: ``bench.json``, format ``numbanorm-bench/2``. Per case: the traffic ``floor``
  (reads, writes, bytes, what in words), the ``roofline`` (every copy timed, the one ``used``,
  its time and GB/s, ``unstable`` when that copy's samples disagree), and per peer its samples'
  statistics, ``time_s`` (the configured statistic), ``gbps`` (floor bytes / time),
  ``floor_fraction`` (roofline time / time), and the marks: ``floor_suspect`` (fraction above
  1.05: a wrong floor), ``unstable`` with ``unstable_why``, ``remeasured`` with the ``first``
  measurement. ``isolation`` holds the evidence that no library ran while another was timed.
- :data:`DASHBOARD_SCHEMA`: ``dashboard.json``, github-action-benchmark's ``customBiggerIsBetter``
  input.

:func:`validate` checks a document with ``jsonschema`` (a test dependency, not a runtime one).
"""

from __future__ import annotations

_NUM = {"type": "number"}
_STATS = {
    "median_s": {"type": "number", "exclusiveMinimum": 0}, "min_s": {"type": "number", "exclusiveMinimum": 0},
    "max_s": _NUM, "repeats": {"type": "integer", "minimum": 1}, "inner_loops": {"type": "integer", "minimum": 1},
    "time_s": {"type": "number", "exclusiveMinimum": 0}, "gbps": _NUM, "rel_l2_error": _NUM,
    "cores_used": {"type": ["number", "null"]}, "others_cores": _NUM, "preempted_share": _NUM,
    "stall_share": _NUM, "quiesce_s": _NUM, "not_quiet": {"type": "integer"},
    "unstable": {"type": "boolean"}, "unstable_why": {"type": "string"}, "remeasured": {"type": "boolean"},
    "suspect_why": {"type": "string"}, "first": {"type": "object"},
    "note": {"type": "string"}, "caveat": {"type": "string"}, "error": {"type": "string"},
}
_CELL = {"oneOf": [
    {"type": "object", "required": ["skipped"], "properties": {"skipped": {"type": "string"}}},
    {"type": "object", "required": ["error"], "not": {"required": ["median_s"]}},
    {"type": "object", "required": ["median_s", "min_s", "repeats", "time_s", "gbps", "rel_l2_error"],
     "properties": _STATS},
]}
_PEER_CELL = {"allOf": [_CELL, {"properties": {"floor_fraction": _NUM, "floor_suspect": {"const": True}},
                                "dependentRequired": {"floor_suspect": ["floor_fraction"]}}]}
_FLOOR = {"type": "object", "required": ["reads", "writes", "arrays", "bytes", "copies_of_x", "moves"],
          "properties": {"reads": {"type": "integer", "minimum": 1}, "writes": {"type": "integer", "minimum": 1},
                         "arrays": {"type": "integer"}, "bytes": {"type": "integer", "minimum": 1},
                         "copies_of_x": _NUM, "moves": {"type": "string"}}}
_ROOFLINE = {"type": "object", "required": ["copies"],
             "properties": {"copies": {"type": "object", "additionalProperties": _CELL},
                            "used": {"enum": ["copy", "copy-nt", "copy-1t"]}, "time_s": _NUM, "gbps": _NUM,
                            "unstable": {"type": "boolean"}},
             "dependentRequired": {"used": ["time_s", "gbps"]}}
_RESULT = {"type": "object",
           "required": ["group", "op", "layout", "shape", "dtype", "category", "x_bytes", "floor", "roofline", "peers"],
           "properties": {"group": {"type": "string", "pattern": r"^[a-z0-9_]+\|[A-Z]+\|[0-9x]+$"},
                          "op": {"type": "string"}, "layout": {"type": "string"},
                          "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                          "dtype": {"enum": ["float32", "float16", "bfloat16"]},
                          "category": {"enum": ["forward", "backward", "half", "family"]},
                          "x_bytes": {"type": "integer", "minimum": 1}, "floor": _FLOOR, "roofline": _ROOFLINE,
                          "peers": {"type": "object", "additionalProperties": _PEER_CELL}}}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "numbanorm-bench/2",
    "type": "object",
    "required": ["format", "machine", "config", "missing_peers", "results", "isolation"],
    "properties": {
        "format": {"const": "numbanorm-bench/2"},
        "machine": {"type": "object", "required": ["date", "cpu", "cpu_flags", "llc_bytes", "cores", "threads",
                                                   "versions"]},
        "config": {"type": "object", "required": ["grid", "ops", "peers", "threads", "budget_s", "stat"],
                   "properties": {"stat": {"enum": ["median", "min"]}, "threads": {"type": "integer", "minimum": 1}}},
        "missing_peers": {"type": "object", "additionalProperties": {"type": "string"}},
        "results": {"type": "array", "items": _RESULT},
        "isolation": {"type": "object", "required": ["quiesce", "workers", "max_others_cores"],
                      "properties": {"workers": {"type": "object", "additionalProperties": {
                          "type": "object", "required": ["idle_cpu_s", "idle_wall_s", "idle_cores"]}}}},
    },
}
DASHBOARD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "github-action-benchmark customBiggerIsBetter",
    "type": "array",
    "items": {"type": "object", "required": ["name", "unit", "value"], "additionalProperties": False,
              "properties": {"name": {"type": "string", "minLength": 1},
                             "unit": {"enum": ["GB/s", "fraction of floor"]},
                             "value": {"type": "number"}, "range": {"type": "string"},
                             "extra": {"type": "string"}}},
}


def validate(doc: object, schema: dict) -> None:
    """Raise ``jsonschema.ValidationError`` if ``doc`` does not match ``schema``."""
    import jsonschema

    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
