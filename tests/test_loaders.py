"""Every file the tool reads takes any bytes calmly: a valid result, or one
:class:`SpecError` line naming the file (and the field where there is one); never
another exception, a traceback, a hang on an alias bomb or a RecursionError.

Property-based (hypothesis), derandomized (``derandomize=True``): every run, in CI
too, draws the same examples. ``FIDOPERF_FUZZ=N`` multiplies the counts by N and
draws fresh random examples, for hunting locally (N = 20 took about 6 minutes).
The whole file takes 17-20 s on a 2-core machine. Examples per run:

| test                                      | what it feeds                                      | examples |
|-------------------------------------------|----------------------------------------------------|---------:|
| test_read_yaml_any_bytes                  | random bytes -> read_yaml, both YAML parsers       |  2 x 150 |
| test_read_yaml_yamlish_text               | text of YAML punctuation -> read_yaml, both parsers|  2 x 150 |
| test_read_yaml_random_documents           | random YAML documents -> read_yaml                 |       40 |
| test_load_hardware_random_documents       | random documents, hardware keys -> load_hardware   |       40 |
| test_load_model_random_documents          | random documents, model keys -> load_model         |       40 |
| test_load_hardware_spec_shaped_documents  | random valid profiles, half with one mutation      |       60 |
| test_load_model_spec_shaped_documents     | random valid models, half with one mutation        |       60 |
| test_load_hardware_mutations              | shipped profiles, a key dropped/retyped/added      |       60 |
| test_load_model_mutations                 | shipped models, a key dropped/retyped/added        |       60 |
| test_t5_table_mutations                   | the shipped T5 size table, mutated                 |       30 |
| test_load_quality_mutations               | the shipped quality.yaml, mutated                  |       30 |
| test_load_quality_any_bytes               | random bytes -> load_quality                       |       60 |
| test_shipped_files_with_bytes_changed     | any shipped YAML with bytes inserted/deleted       |      100 |
| test_read_table_any_bytes                 | random bytes -> read_table                         |      100 |
| test_read_table_random_cells              | random valid CSV tables, half with one fault       |      100 |
| test_any_bytes_on_the_command_line        | random bytes as --hardware/--model/`op --input`    |       20 |
| total                                     |                                                    |    1,400 |

A valid result is checked too: positive finite figures, curves that evaluate, JSON
output, and (for a quarter of the generated profiles and models) a prediction.
Fixed cases cover what random bytes rarely hit (a PNG header, NUL, Latin-1, UTF-16,
the billion laughs, a recursive alias, deep nesting, a 5000-digit number, a bad date,
duplicate keys, explicit tags, ...), and the command line: a binary ``--hardware``,
``--model`` or ``--quality-file`` gives exit status 2 and one line "Error: <file>: ..."
(``op --input``: "Error: --input <file>: ...").
"""

from __future__ import annotations

import atexit
import copy
import csv
import dataclasses
import io
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fidoperf.cli import cli
from fidoperf.errors import SpecError
from fidoperf.present.fmt import to_json
from fidoperf.present.plots import load_quality, quality_path
from fidoperf.specs import Hardware, ModelSpec, load_hardware, load_model, read_yaml, validate_stack
from fidoperf.specs.model import check_family
from fidoperf.specs.tables import read_table
from fidoperf.specs.yamlio import MAX_DEPTH, MAX_NODES, data_dir

REPO = Path(__file__).resolve().parent.parent
HARDWARE_FILES = sorted(data_dir("hardware").glob("*.yaml"))
MODEL_FILES = sorted(data_dir("models").glob("*.yaml"))
T5_TABLE = data_dir("models") / "sizes" / "t5-v1.1.yaml"
SHIPPED = HARDWARE_FILES + MODEL_FILES + [T5_TABLE, quality_path()]

# One temporary folder for all examples (hypothesis runs a test body many times; a
# function-scoped tmp_path would be shared anyway).
SCRATCH = Path(tempfile.mkdtemp(prefix="fidoperf-loaders-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


def scratch(data: bytes | str, name: str = "spec.yaml") -> Path:
    path = SCRATCH / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def calm(load, path: Path):
    """Run ``load(path)``: return its result, or None after checking that it raised the
    one error type, in one line, naming the file."""
    try:
        out = load(path)
        event("valid result")  # --hypothesis-show-statistics shows how many were
        return out
    except SpecError as err:
        event("SpecError")
        text = str(err)
        assert type(err) is SpecError
        assert len(text.splitlines()) == 1, f"more than one line: {text!r}"
        assert str(path) in text, f"the file is not named: {text!r}"
        return None


def check_hardware(hw: Hardware) -> None:
    """A loaded profile is usable: positive finite figures, curves that evaluate, JSON."""
    from fidoperf.costmodel.prediction import hardware_dict

    assert isinstance(hw, Hardware) and isinstance(hw.name, str) and hw.name.strip()
    assert hw.peak_flops_per_s and all(math.isfinite(v) and v > 0 for v in hw.peak_flops_per_s.values())
    for v in (hw.hbm_bytes_per_s, hw.hbm_capacity_bytes):
        assert isinstance(v, float) and math.isfinite(v) and v > 0
    for v in (hw.overhead_s_per_op, hw.overhead_s_per_call):
        assert math.isfinite(v) and v >= 0
    for curve in hw.efficiency.values():
        assert all(math.isfinite(x) and math.isfinite(y) for x, y in curve.points)
        curve(1e6)
    to_json(hardware_dict(hw))


def check_model(m: ModelSpec) -> None:
    assert isinstance(m, ModelSpec) and isinstance(m.name, str) and m.name.strip()
    validate_stack(m.encoder, "check", "encoder")
    validate_stack(m.decoder, "check", "decoder")
    assert isinstance(m.vocab_size, int) and m.vocab_size >= 1
    to_json(dataclasses.asdict(m))


def predict_tiny(hw=None, model=None):
    """A loaded spec works in the cost model too (smallest workload, so it is quick)."""
    from fidoperf.costmodel.prediction import predict
    from fidoperf.specs import Workload

    if model is not None and model.encoder.num_layers + model.decoder.num_layers > 1000:
        return  # valid, but a prediction would build a row per layer
    from fidoperf.specs import DTYPE_PRESETS

    hw = hw or load_hardware("tpu-v4")
    dtype = next(d for d in ["bf16", *hw.peak_flops_per_s, "bf16"] if d in DTYPE_PRESETS)
    if DTYPE_PRESETS[dtype][3] not in hw.peak_flops_per_s:
        return  # no preset runs on this chip's only dtype (a clean error, tested in test_specs)
    wl = Workload.with_dtype(dtype, passages=1, passage_len=4, target_len=1, batch=1)
    pred = predict(model or load_model("fid-small"), hw, wl)
    assert pred.totals["time_per_sample_s"] > 0


# --------------------------------------------------------------------------- strategies

HARDWARE_KEYS = [
    "name", "description", "kind", "vendor", "decisions", "peak_flops_per_s", "bf16", "fp16", "fp32", "int8",
    "memory", "capacity_bytes", "bandwidth_bytes_per_s", "value", "source", "note", "on_chip_bytes",
    "interconnect_bytes_per_s", "tdp_w", "price_per_chip_hour_usd", "efficiency", "compute", "matmul_compute",
    "by", "points", "overhead_s_per_op", "overhead_s_per_call", "measured", "machine", "date", "versions",
    "default_implementation", "kernel_model", "compute_units", "gemm_tiles", "gemm_split_k", "flash_block_q",
    "async_launch", "interconnect", "library", "nccl_arch", "call_latency_s", "node", "network", "nvls",
    "topology", "link_type", "chips", "link_bytes_per_s", "latency_s",
]
MODEL_KEYS = [
    "name", "description", "source", "vocab_size", "encoder", "decoder", "size", "num_layers", "emb_dim",
    "num_heads", "num_kv_heads", "head_dim", "mlp_dim", "gated_mlp", "cross_attn_every",
]
QUALITY_KEYS = ["rows", "model", "fidoperf_model", "dataset", "exact_match", "source", "setting", "passages", "note"]
SCALAR_TEXT = ["base", "fido-base", "NaturalQuestions", "bf16", "small", "xl", "flops", "bytes", "rows",
               "measured", "datasheet", "1e12", "x", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=100),
    st.integers(),
    st.floats(),
    st.floats(min_value=1e-3, max_value=1e15),
    st.text(max_size=12),
    st.sampled_from(SCALAR_TEXT),
    st.dates(),
    st.binary(max_size=6),
)


def documents(keys: list[str], leaves: int = 12):
    """Nested mappings and lists of scalars, keys mostly from a spec's vocabulary (so
    the parsers get past their first check), some of any hashable type."""
    key = st.one_of(st.sampled_from(keys), st.sampled_from(keys), st.text(max_size=8), st.integers(),
                    st.booleans(), st.none(), st.floats(allow_nan=False))
    nested = st.recursive(
        scalars,
        lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(key, kids, max_size=5)),
        max_leaves=leaves,
    )
    return st.dictionaries(key, nested, max_size=8)


# Valid specs with random legal values (then, half the time, one mutation), so that
# the parsers' deeper checks (curves, overheads, stacks) are reached and the valid
# results are varied enough to exercise the cost model.
positive = st.floats(1e-6, 1e18) | st.integers(1, 10**12)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8).filter(str.strip)


def sourced(value=positive):
    return st.fixed_dictionaries({"value": value, "source": text}, optional={"note": st.text(max_size=6)})


@st.composite
def curves(draw):
    if draw(st.booleans()):
        return {"value": draw(st.floats(0.01, 1.5)), "source": draw(text)}
    sizes = sorted(draw(st.lists(st.floats(1, 1e15), min_size=1, max_size=4, unique=True)))
    return {"by": draw(st.sampled_from(["flops", "bytes", "rows"])), "source": draw(text),
            "points": [[x, draw(st.floats(0.01, 1.5))] for x in sizes]}


@st.composite
def hardware_docs(draw):
    dtypes = draw(st.lists(st.sampled_from(["bf16", "fp16", "fp32", "tf32", "int8", "fp8"]), min_size=1,
                           max_size=4, unique=True))
    doc = {"name": draw(text), "peak_flops_per_s": {d: draw(sourced()) for d in dtypes},
           "memory": {"capacity_bytes": draw(sourced()), "bandwidth_bytes_per_s": draw(sourced())}}
    for key in ("on_chip_bytes", "interconnect_bytes_per_s", "tdp_w", "price_per_chip_hour_usd"):
        if draw(st.booleans()):
            doc[key] = draw(sourced(positive | st.none()))
    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(["compute", "memory", "matmul_compute", "attention_memory",
                                              "vector_memory", "gather_compute"]), max_size=3, unique=True))
        doc["efficiency"] = {k: draw(curves()) for k in keys}
    for key in ("overhead_s_per_op", "overhead_s_per_call"):
        if draw(st.booleans()):
            doc[key] = {"value": draw(st.floats(0, 1e-3)), "source": draw(text)}
    if draw(st.booleans()):
        doc["kind"] = "measured"
        doc["measured"] = {"machine": draw(text), "date": draw(st.dates() | text),
                           "versions": {"jax": draw(text)}}
    return doc


@st.composite
def stacks(draw, decoder: bool):
    if draw(st.booleans()):
        stack = {"size": draw(st.sampled_from(["small", "base", "large", "xl", "xxl"]))}
        heads = {"small": 6, "base": 12, "large": 16, "xl": 32, "xxl": 64}[stack["size"]]
        layers = {"small": 8, "base": 12}.get(stack["size"], 24)
        if draw(st.booleans()):
            layers = stack["num_layers"] = draw(st.integers(1, 48))
    else:
        heads, layers = draw(st.integers(1, 16)), draw(st.integers(1, 48))
        stack = {"num_layers": layers, "emb_dim": draw(st.integers(1, 4096)), "num_heads": heads,
                 "head_dim": draw(st.integers(1, 128)), "mlp_dim": draw(st.integers(1, 8192))}
    if draw(st.booleans()):
        stack["num_kv_heads"] = draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
    if draw(st.booleans()):
        stack["gated_mlp"] = draw(st.booleans())
    if decoder and draw(st.booleans()):
        stack["cross_attn_every"] = draw(st.integers(1, layers))
    return stack


@st.composite
def model_docs(draw):
    doc = {"name": draw(text), "encoder": draw(stacks(False)), "decoder": draw(stacks(True))}
    if draw(st.booleans()):
        doc["vocab_size"] = draw(st.integers(1, 300_000))
    return doc


def valid_or_mutated(docs, keys):
    return docs.flatmap(lambda d: st.one_of(st.just(d), mutated(d, keys)))


def dump(doc) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when there: the test's own cost
    return yaml.dump(doc, Dumper=dumper, allow_unicode=True, sort_keys=False)


@st.composite
def mutated(draw, doc, keys=()):
    """``doc`` (plain YAML data) with one change at a random place: a key or item
    dropped, a value replaced by another type, a key added (a known one from ``keys``
    with a random value, or junk)."""
    doc = copy.deepcopy(doc)
    node = doc
    while True:  # walk down to a random container
        kids = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        inner = [(k, v) for k, v in kids if isinstance(v, (dict, list)) and v]
        if not inner or draw(st.integers(0, 3)) == 0:
            break
        node = draw(st.sampled_from(inner))[1]
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    action = draw(st.sampled_from(["drop", "retype", "junk", "replace"] if keys else ["junk"]))
    if action == "junk":
        junk = draw(st.one_of(st.sampled_from(list(keys) or ["x"]), st.text(max_size=8), st.integers()))
        value = draw(st.recursive(scalars, lambda k: st.lists(k, max_size=3) | st.dictionaries(
            st.sampled_from(list(keys) or ["x"]), k, max_size=3), max_leaves=5))
        if isinstance(node, dict):
            node[junk] = value
        else:
            node.append(value)
        return doc
    key = draw(st.sampled_from(keys))
    if action == "drop":
        del node[key]
    elif action == "retype":
        old = node[key]
        node[key] = draw(st.sampled_from([str(old), [old], {"value": old}, None, True, 0, -1, 1.5, "", {}]))
    else:
        node[key] = draw(st.recursive(scalars, lambda k: st.lists(k, max_size=3) | st.dictionaries(
            st.sampled_from(list(keys) or ["x"]) | st.text(max_size=6), k, max_size=3), max_leaves=6))
    return doc


def shipped_doc(path: Path):
    return read_yaml(path)


HARDWARE_DOCS = [shipped_doc(p) for p in HARDWARE_FILES]
MODEL_DOCS = [shipped_doc(p) for p in MODEL_FILES]

# Derandomized: every run draws the same examples. FIDOPERF_FUZZ=N multiplies the
# counts by N and draws fresh random examples, to hunt for new failures locally.
FUZZ = int(os.environ.get("FIDOPERF_FUZZ", "1"))
SETTINGS = dict(deadline=None, derandomize=FUZZ == 1, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])


def examples(n: int) -> int:
    return n * FUZZ


# --------------------------------------------------------------------------- read_yaml


@pytest.fixture(params=["libyaml", "python"])
def parser(request, monkeypatch):
    """Both YAML scanners: libyaml's (when PyYAML has it) and PyYAML's own."""
    from fidoperf.specs import yamlio

    if request.param == "python":
        monkeypatch.setattr(yamlio, "_CSpecLoader", None)
    # Without libyaml, "libyaml" runs PyYAML's scanner too.
    return request.param




@settings(max_examples=examples(150), **SETTINGS)
@given(st.binary(max_size=300))
def test_read_yaml_any_bytes(parser, data):
    path = scratch(data)
    out = calm(read_yaml, path)
    assert out is None or isinstance(out, dict)


YAML_ALPHABET = ":-[]{}&*!|>'\"#,?%@` \n\t\\abcxyz019.eE+~_<"


@settings(max_examples=examples(150), **SETTINGS)
@given(st.text(alphabet=YAML_ALPHABET, max_size=120))
def test_read_yaml_yamlish_text(parser, text):
    out = calm(read_yaml, scratch(text))
    assert out is None or isinstance(out, dict)


@settings(max_examples=examples(40), **SETTINGS)
@given(st.one_of(documents(HARDWARE_KEYS + MODEL_KEYS), st.recursive(scalars, st.lists, max_leaves=5)))
def test_read_yaml_random_documents(doc):
    out = calm(read_yaml, scratch(dump(doc)))
    assert out is None or isinstance(out, dict)
    if isinstance(doc, dict) and out is not None:
        assert len(out) == len(doc)


# --------------------------------------------------------------------------- hardware, models


@settings(max_examples=examples(40), **SETTINGS)
@given(documents(HARDWARE_KEYS))
def test_load_hardware_random_documents(doc):
    hw = calm(load_hardware, scratch(dump(doc)))
    if hw is not None:
        check_hardware(hw)


@settings(max_examples=examples(40), **SETTINGS)
@given(documents(MODEL_KEYS))
def test_load_model_random_documents(doc):
    m = calm(load_model, scratch(dump(doc)))
    if m is not None:
        check_model(m)


@settings(max_examples=examples(60), **SETTINGS)
@given(valid_or_mutated(hardware_docs(), HARDWARE_KEYS), st.integers(0, 3))
def test_load_hardware_spec_shaped_documents(doc, one_in_four):
    hw = calm(load_hardware, scratch(dump(doc)))
    if hw is not None:
        check_hardware(hw)
        if one_in_four == 0:  # a prediction takes ~50 ms
            predict_tiny(hw=hw)


@settings(max_examples=examples(60), **SETTINGS)
@given(valid_or_mutated(model_docs(), MODEL_KEYS), st.integers(0, 3))
def test_load_model_spec_shaped_documents(doc, one_in_four):
    m = calm(load_model, scratch(dump(doc)))
    if m is not None:
        check_model(m)
        if one_in_four == 0:
            predict_tiny(model=m)


@settings(max_examples=examples(60), **SETTINGS)
@given(st.sampled_from(HARDWARE_DOCS).flatmap(lambda d: mutated(d, HARDWARE_KEYS)))
def test_load_hardware_mutations(doc):
    hw = calm(load_hardware, scratch(dump(doc)))
    if hw is not None:
        check_hardware(hw)


@settings(max_examples=examples(60), **SETTINGS)
@given(st.sampled_from(MODEL_DOCS).flatmap(lambda d: mutated(d, MODEL_KEYS)))
def test_load_model_mutations(doc):
    m = calm(load_model, scratch(dump(doc)))
    if m is not None:
        check_model(m)


@settings(max_examples=examples(30), **SETTINGS)
@given(mutated(shipped_doc(T5_TABLE), MODEL_KEYS + ["sizes", "vocab_size"]))
def test_t5_table_mutations(doc):
    """The T5 size table is read by read_yaml and checked by check_family."""
    out = calm(lambda p: check_family(read_yaml(p), str(p)), scratch(dump(doc)))
    if out is not None:
        for fields in out["sizes"].values():
            assert all(isinstance(v, int) and v >= 1 for v in fields.values())


# --------------------------------------------------------------------------- quality


@settings(max_examples=examples(30), **SETTINGS)
@given(mutated(shipped_doc(quality_path()), QUALITY_KEYS))
def test_load_quality_mutations(doc):
    q = calm(load_quality, scratch(dump(doc)))
    if q is not None:
        assert len(q) >= 1
        em = q["exact_match"].dropna()
        assert ((em >= 0) & (em <= 100)).all()


@settings(max_examples=examples(60), **SETTINGS)
@given(st.binary(max_size=200))
def test_load_quality_any_bytes(data):
    q = calm(load_quality, scratch(data))
    assert q is None or len(q) >= 1


# --------------------------------------------------------------------------- bytes of shipped files


@st.composite
def shipped_bytes_changed(draw):
    path = draw(st.sampled_from(SHIPPED))
    data = bytearray(path.read_bytes())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        junk = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b":", b"\n", b"  ", b"- ", b"&a", b"*a",
                                                                          b"\x00", b"\xff", b"[", b"{", b"'"]))
        if action == "insert":
            data[at:at] = junk
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 40))]
        else:
            data[at:at + len(junk)] = junk
    return path, bytes(data)


@settings(max_examples=examples(100), **SETTINGS)
@given(shipped_bytes_changed())
def test_shipped_files_with_bytes_changed(case):
    original, data = case
    path = scratch(data)
    if original in HARDWARE_FILES:
        hw = calm(load_hardware, path)
        if hw is not None:
            check_hardware(hw)
    elif original in MODEL_FILES:
        m = calm(load_model, path)
        if m is not None:
            check_model(m)
    elif original == T5_TABLE:
        calm(lambda p: check_family(read_yaml(p), str(p)), path)
    else:
        calm(load_quality, path)


# --------------------------------------------------------------------------- read_table

COLUMNS = {"batch": int, "time_s": float, "prefill": bool}
OPTIONAL = {"passages": ("positive_int", 40), "label": (str, "")}


def check_table(df) -> None:
    assert list(df.columns) == ["batch", "time_s", "prefill", "passages", "label"]
    assert len(df) >= 1
    assert str(df["batch"].dtype) == "int64" and (df["batch"] >= 0).all()
    assert str(df["time_s"].dtype) == "float64" and (df["time_s"] >= 0).all()
    assert df["time_s"].map(math.isfinite).all()
    assert str(df["prefill"].dtype) == "bool"
    assert (df["passages"] >= 1).all()


def table(path):
    return read_table(path, COLUMNS, "--trace", optional=OPTIONAL)


@settings(max_examples=examples(100), **SETTINGS)
@given(st.binary(max_size=300))
def test_read_table_any_bytes(data):
    df = calm(table, scratch(data, "t.csv"))
    if df is not None:
        check_table(df)


CELLS = st.one_of(
    st.sampled_from(["0", "1", "2", "7", "1.5", "2.0", "1e3", "-1", "nan", "inf", "-0", "true", "FALSE", "yes", "",
                     " 3 ", "1e400", "9" * 30, "0x1", "1_0", '"4"', "a,b", "x"]),
    st.integers(-5, 10**6).map(str),
    st.floats().map(repr),
    st.text(max_size=6),
)


CELL_OF = {
    "batch": st.integers(0, 10**6).map(str) | st.sampled_from(["2.0", "1e3", " 7 "]),
    "time_s": st.floats(0, 1e9).map(repr) | st.sampled_from(["0", "1e-9", "3"]),
    "prefill": st.sampled_from(["true", "false", "TRUE", "0", "1", "False"]),
    "passages": st.integers(1, 1000).map(str),
    "label": text,
}


@st.composite
def csv_tables(draw):
    """A valid table (columns in any order, optional ones or not), then half the time
    one thing broken: a cell, a row's length, the header, a column, the quoting."""
    optional = draw(st.lists(st.sampled_from(["passages", "label"]), unique=True))
    names = draw(st.permutations(["batch", "time_s", "prefill", *optional]))
    rows = [[draw(CELL_OF[c]) for c in names] for _ in range(draw(st.integers(1, 5)))]
    header = list(names)
    fault = draw(st.sampled_from(["none", "none", "none", "cell", "short", "long", "header", "drop", "rows"]))
    if fault == "cell":
        row = draw(st.sampled_from(rows))
        row[draw(st.integers(0, len(row) - 1))] = draw(CELLS)
    elif fault in ("short", "long"):
        row = draw(st.sampled_from(rows))
        row[:] = row[:-1] if fault == "short" else row + [draw(CELLS)]
    elif fault == "header":
        header[draw(st.integers(0, len(header) - 1))] = draw(st.sampled_from(["", "Batch", "bogus", "batch", " "]))
    elif fault == "drop":
        i = draw(st.integers(0, len(header) - 1))
        del header[i]
        for row in rows:
            del row[i]
    elif fault == "rows":
        rows = []
    out = io.StringIO()
    csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows([header, *rows])
    data = out.getvalue()
    if draw(st.integers(0, 9)) == 0:  # raw damage: a stray quote or a NUL, anywhere
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(['"', "\x00", ",", "\n"])) + data[at:]
    return data


@settings(max_examples=examples(100), **SETTINGS)
@given(csv_tables())
def test_read_table_random_cells(text):
    df = calm(table, scratch(text, "t.csv"))
    if df is not None:
        check_table(df)


# --------------------------------------------------------------------------- fixed cases

BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}' if p else 'lol'] * 9)}]\n"
               for p, c in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefgh")) + "name: *h\n"

FIXED = [
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a UTF-8 text file"),
    ("nul", b"name: a\x00b\n", "NUL byte"),
    ("latin-1", "name: caf\u00e9\n".encode("latin-1"), "not a UTF-8 text file"),
    ("control-char", b"name: a\x07b\n", "U+0007"),
    ("empty", b"", "empty file"),
    ("comment-only", b"# nothing\n", "empty file"),
    ("a-list", b"- 1\n- 2\n", "expected a mapping"),
    ("a-number", b"42\n", "expected a mapping"),
    ("malformed", b"name: [\n", "malformed YAML at line"),
    ("two-documents", b"a: 1\n---\nb: 2\n", "single document"),
    ("billion-laughs", BOMB.encode(), f"more than {MAX_NODES:,} values"),
    ("recursive-alias", b"a: &x [1, *x]\n", "recursive alias"),
    ("recursive-key", b"&a {*a: 1}\n", "recursive alias"),
    ("deep-lists", b"a: " + b"[" * 600 + b"]" * 600 + b"\n", f"nested more than {MAX_DEPTH} levels"),
    ("very-deep-lists", b"a: " + b"[" * 1100 + b"]" * 1100 + b"\n", "nest"),  # libyaml stops at 1000
    ("deep-maps", b"".join(b"  " * i + b"k:\n" for i in range(200)), f"nested more than {MAX_DEPTH} levels"),
    ("deep-by-aliases", b"a: &a " + b"[" * 40 + b"1" + b"]" * 40 + b"\nb: " + b"[" * 40 + b"*a" + b"]" * 40 + b"\n",
     "nested too deeply"),
    ("huge-int", b"name: " + b"9" * 5000 + b"\n", "is not a whole number"),
    ("bad-date", b"date: 2024-13-45\n", "is not a date"),
    ("duplicate-key", b"name: a\nname: b\n", "duplicate key at line 2: 'name'"),
    ("unhashable-key", b"? [a, b]\n: 1\n", "unhashable"),
    ("python-tag", b"a: !!python/object/apply:os.system ['true']\n", "malformed YAML"),
    ("tagged-bool", b"a: !!bool maybe\n", "'maybe' is not true or false"),
    ("tagged-date", b"a: !!timestamp soon\n", "'soon' is not a date"),
    ("null-document", b"---\n", "got nothing"),
]


@pytest.mark.parametrize("case,data,needle", FIXED, ids=[c[0] for c in FIXED])
def test_read_yaml_fixed_cases(case, data, needle, tmp_path, parser):
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(data)
    # Every loader reads through read_yaml; once is enough for the second parser.
    loaders = (read_yaml, load_hardware, load_model, load_quality) if parser == "libyaml" else (read_yaml,)
    for load in loaders:
        with pytest.raises(SpecError) as err:
            load(path)
        text = str(err.value)
        assert text.startswith(f"{path}: ") and len(text.splitlines()) == 1, text
        assert needle in text, text
        assert len(text) < 400, text


def test_read_yaml_accepts_what_editors_write(tmp_path, parser):
    """A byte-order mark, UTF-16 with its mark, Windows line ends and anchors reused
    within the limits are all fine."""
    text = "name: caf\u00e9\nsource: &s the datasheet\nnote: *s\n"
    for i, data in enumerate([text.encode("utf-8-sig"), text.encode("utf-16"), text.replace("\n", "\r\n").encode()]):
        path = tmp_path / f"ok{i}.yaml"
        path.write_bytes(data)
        assert read_yaml(path) == {"name": "caf\u00e9", "source": "the datasheet", "note": "the datasheet"}


def test_read_yaml_limits_leave_room_for_real_files(parser):
    """The shipped files are far inside the limits (else the limits are wrong), and both
    parsers read them to the same data as ``yaml.safe_load``."""
    for path in SHIPPED:
        assert read_yaml(path) == yaml.safe_load(path.read_text(encoding="utf-8"))
        assert path.stat().st_size < 100_000


def test_unreadable_and_oversized_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read file"):
        read_yaml(tmp_path)  # a folder
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: " + b"x" * 1_000_001)
    with pytest.raises(SpecError, match="file too large"):
        read_yaml(big)


def test_non_string_keys_name_the_key(tmp_path):
    hw = (REPO / "hardware" / "tpu-v4.yaml").read_text() + "1: x\n"
    path = tmp_path / "hw.yaml"
    path.write_text(hw)
    with pytest.raises(SpecError, match=r"hw\.yaml: 1: unknown field"):
        load_hardware(path)
    path.write_text("name: x\nencoder: {size: base, ? [1] : 2}\n")  # unhashable key in a flow mapping
    with pytest.raises(SpecError, match="unhashable"):
        load_model(path)


def test_measured_section_of_a_profile(tmp_path):
    """`measured` must be a mapping whatever the kind; a YAML date in it (unquoted)
    is fine and reaches JSON as ISO text."""
    from fidoperf.costmodel.prediction import hardware_dict

    base = (REPO / "hardware" / "tpu-v4.yaml").read_text()
    path = tmp_path / "hw.yaml"
    path.write_text(base + "measured: [1, 2]\n")
    with pytest.raises(SpecError, match=r"hw\.yaml: measured: expected a mapping, got \[1, 2\]"):
        load_hardware(path)
    path.write_text(base + "measured: {date: 2026-05-01}\n")
    assert '"date": "2026-05-01"' in to_json(hardware_dict(load_hardware(path)))
    for bad, field in [("{versions: {jax: !!binary AA==}}", "measured.versions.jax"),
                       ("{2026-05-01: x}", "measured"), ("{runs: [1, .nan]}", r"measured.runs\[1\]")]:
        path.write_text(base + f"measured: {bad}\n")
        with pytest.raises(SpecError, match=rf"hw\.yaml: {field}: "):
            load_hardware(path)


def test_key_with_a_line_break_stays_on_one_line(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text('name: x\nencoder: {size: base}\ndecoder: {size: base}\n"bad\\nkey": 1\n')
    with pytest.raises(SpecError) as err:
        load_model(path)
    assert str(err.value).endswith("bad\\nkey: unknown field")


TABLE_CASES = [
    ("header-only", "batch,time_s,prefill\n", "no data rows"),
    ("empty", "", "empty file"),
    ("ragged", "batch,time_s,prefill\n1,2,true\n3,4\n", "row 3: 2 cells, but the header has 3 columns"),
    ("nan", "batch,time_s,prefill\n1,nan,true\n", "row 2, column time_s: expected a finite number"),
    ("inf", "batch,time_s,prefill\n1,2,true\n1,inf,true\n", "row 3, column time_s: expected a finite number"),
    ("negative", "batch,time_s,prefill\n-1,2,true\n", "row 2, column batch: must not be negative"),
    ("fraction", "batch,time_s,prefill\n1.5,2,true\n", "row 2, column batch: expected a whole number"),
    ("text", "batch,time_s,prefill\n1,fast,true\n", "row 2, column time_s: expected a number, got 'fast'"),
    ("bool", "batch,time_s,prefill\n1,2,yes\n", "row 2, column prefill: expected true or false"),
    ("empty-cell", "batch,time_s,prefill\n1,,true\n", "row 2, column time_s: empty cell"),
    ("missing", "batch,prefill\n1,true\n", "column time_s: missing required column"),
    ("unknown", "batch,time_s,prefill,colour\n1,2,true,red\n", "column 'colour': unknown column"),
    ("duplicate", "batch,time_s,prefill,batch\n1,2,true,1\n", "appears twice"),
    ("zero-passages", "batch,time_s,prefill,passages\n1,2,true,0\n", "column passages: must be positive"),
    ("bad-quote", 'batch,time_s,prefill\n"1"x,2,true\n', "row 2: not a CSV table"),
    ("blank-line-counts", "batch,time_s,prefill\n1,2,true\n\n-4,2,true\n", "row 4, column batch"),
]


@pytest.mark.parametrize("case,text,needle", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_read_table_fixed_cases(case, text, needle, tmp_path):
    path = tmp_path / f"{case}.csv"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        table(path)
    assert str(err.value).startswith(f"--trace {path}: "), str(err.value)
    assert needle in str(err.value)


def test_read_table_reads_what_a_spreadsheet_writes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffprefill,batch,time_s,label\r\nTRUE,8,0.5,\"a, b\"\r\n0,1e3,2,x\r\n".encode())
    df = table(path)
    assert df.to_dict("list") == {"batch": [8, 1000], "time_s": [0.5, 2.0], "prefill": [True, False],
                                  "passages": [40, 40], "label": ["a, b", "x"]}
    check_table(df)


# --------------------------------------------------------------------------- the command line

BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\xff\xfe"


@pytest.mark.parametrize("args", [["predict", "--hardware"], ["predict", "--model"], ["sweep", "--hardware"],
                                  ["quality", "--quality-file"], ["roofline", "--model"]],
                         ids=lambda a: " ".join(a))
def test_binary_file_on_the_command_line(args, tmp_path):
    path = tmp_path / "picture.yaml"
    path.write_bytes(BINARY)
    result = CliRunner().invoke(cli, [*args, str(path)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: {path}: not a UTF-8 text file"), lines[0]


def test_binary_shape_table_on_the_command_line(tmp_path):
    path = tmp_path / "shapes.csv"
    path.write_bytes(BINARY)
    result = CliRunner().invoke(cli, ["op", "gemm", "--input", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: --input {path}: not a UTF-8 text file (byte 0x89 at offset 0); " \
                                    "expected a CSV table"


@settings(max_examples=examples(20), **SETTINGS)
@given(st.binary(max_size=200), st.sampled_from([["predict", "--hardware"], ["predict", "--model"],
                                                 ["op", "gemm", "--input"]]))
def test_any_bytes_on_the_command_line(data, args):
    path = scratch(data, "cli.yaml")
    result = CliRunner().invoke(cli, [*args, str(path)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    prefix = "Error: --input " if args[0] == "op" else "Error: "
    assert len(lines) == 1 and lines[0].startswith(f"{prefix}{path}: "), result.output
