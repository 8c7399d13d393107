"""The published JSON Schema (workbench/schema/stage_result.v2.json) matches what is written: the
results the judge assembles and the files of recorded runs validate against it."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from workbench import results
from workbench.config import RunConfig
from workbench.run import stage_results
from workbench.run.stages import STAGES
from tests.run.test_judge import comparison, judged, session

SCHEMA_DIR = Path(results.__file__).with_name("schema")
RUNS = Path(__file__).parent / "fixtures" / "runs"
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value, kind: str) -> bool:
    """JSON Schema's types: a bool is not a number, an integer is a whole number."""
    if kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return kind == "number" or (isinstance(value, int) or (math.isfinite(value) and value == int(value)))
    return isinstance(value, TYPES[kind])


def problems(value, schema: dict, root: dict, where: str = "$") -> list[str]:
    """The subset of JSON Schema the published schema uses, checked the way a validator would."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in schema:
        return [] if any(not problems(value, s, root, where) for s in schema["oneOf"]) else [f"{where}: matches no oneOf"]
    kinds = schema.get("type")
    if kinds and not any(_is(value, k) for k in ([kinds] if isinstance(kinds, str) else kinds)):
        return [f"{where}: {value!r:.60} is not {kinds}"]
    if "const" in schema and value != schema["const"] or "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not allowed"]
    if isinstance(value, (int, float)) and "minimum" in schema and value < schema["minimum"]:
        return [f"{where}: {value} < {schema['minimum']}"]
    found = []
    if isinstance(value, dict):
        found += [f"{where}: {key!r} is missing" for key in schema.get("required", []) if key not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, extra if isinstance(extra, dict) else {})
            found += problems(item, sub, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += problems(item, schema["items"], root, f"{where}[{i}]")
    return found


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((SCHEMA_DIR / f"stage_result.v{results.SCHEMA_VERSION}.json").read_text())


def test_the_schema_is_the_version_written(schema):
    assert schema["properties"]["schema"]["const"] == results.SCHEMA_VERSION
    assert schema["$id"] == f"stage_result.v{results.SCHEMA_VERSION}.json"


def _written(result: dict) -> dict:
    """The result as read back from its file (JSON turns tuples into lists, keeps Infinity)."""
    return json.loads(json.dumps(result, default=str))


def test_judged_results_match_the_schema(schema):
    stage = {s.name: s for s in STAGES}
    written = [judged("channels_last", comparison(0.100, 0.080)), judged("compile", comparison(0.1, 0.05, loss=2.0)),
               judged("accumulation", comparison(0.100, 0.120, peak=60.0)),
               stage_results.skipped(session(), stage["tf32"], 3, RunConfig(), "TF32 needs an Ampere GPU", "default order")]
    for result in written:
        assert problems(_written(result), schema, schema) == [], result["stage"]


def test_recorded_runs_match_the_schema_of_their_version():
    for path in sorted(RUNS.glob("*/stages/*.json")):
        if not path.name.endswith(results.TRACE_SUMMARY_SUFFIX):
            doc = json.loads(path.read_text())
            own = json.loads((SCHEMA_DIR / f"stage_result.v{doc['schema']}.json").read_text())
            assert problems(doc, own, own) == [], path.name


def test_the_checker_catches_what_the_schema_forbids(schema):
    good = _written(judged("channels_last", comparison(0.100, 0.080)))
    for key, bad in (("status", "maybe"), ("index", -1), ("schema", 1), ("applied", "amp")):
        assert problems({**good, key: bad}, schema, schema), key
    broken = copy.deepcopy(good)
    del broken["metrics"]["throughput"]["ci95_low"]
    assert problems(broken, schema, schema)


def test_judging_never_changes_what_was_measured():
    compared = comparison(0.100, 0.080)
    before = copy.deepcopy((compared.a_rounds, compared.b_rounds))
    first = judged("channels_last", compared)
    assert (compared.a_rounds, compared.b_rounds) == before
    first["metrics"]["throughput"]["median"] = 0.0  # a reader's change to the result stays in that result
    assert judged("channels_last", compared)["metrics"]["throughput"]["median"] > 0
