"""Property-based tests (Hypothesis) of every parser and validator that takes user input.

Each property feeds generated input to one entry point and accepts exactly two outcomes: a
valid result, or an EffscaleError (on the command line: one line on stderr and exit code 2).
Anything else (another exception, a traceback, a hang, a file left behind) fails. Example counts
are kept small so that the whole file runs in well under 20 s; run
`pytest tests/test_fuzz.py --hypothesis-show-statistics` to see how many inputs each tried.
"""
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import effscale  # noqa: E402
from effscale import Coefficients, EffscaleError, NetworkSpec, ScalingRule  # noqa: E402
from effscale.cli import main  # noqa: E402
from effscale.spec import MAX_BLOCKS, MAX_CHANNELS, MAX_RESOLUTION  # noqa: E402

# Derandomized and without an example database: the suite gives the same verdict on every run and
# writes nothing into the checkout; raise max_examples locally to search harder.
FAST = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])
SLOW = settings(FAST, max_examples=40)
B0 = effscale.get_spec("efficientnet_b0")
# A network small enough to build and save in milliseconds, for the weights-file properties.
TINY = NetworkSpec.from_text("network tiny res=32 stem=8 head=16\nmbconv r1 k3 s2 e2 c8 se0.25")

# Numbers as a user might type them, odd ones included.
NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-10 ** 400, max_value=10 ** 400).map(str),
    st.sampled_from(["nan", "-inf", "1e308", "-1e308", "1e-320", "0", "-0", "0x10", "1_000", " 2", "", "abc",
                     "1e9", "300", "-40", "٣"]),
    st.text(max_size=8))
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-10 ** 30, max_value=10 ** 30),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _one_line_or_success(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("effscale: error: ") and err.count("\n") == 1, err


def _cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own errors: one line, exit 2
        code = exit_.code
    out, err = capsys.readouterr()
    return code, err


# -- spec text ------------------------------------------------------------------------------------------
HEADER_KEYS = ["res", "stem", "head", "act", "dropout", "drop_path", "bn_eps", "bn_momentum", "padding",
               "scale_stem_head", "divisor", "mean", "std", "crop_pct", "colour", ""]
VALUE_TEXT = st.one_of(NUMBER_TEXT, st.sampled_from(["swish", "relu6", "same", "symmetric", "1,2,3", "0.5,0.5",
                                                      "1,2,nan", "=", ","]))
HEADER = st.tuples(st.sampled_from(["network", "series", "net", ""]), st.text(min_size=0, max_size=6),
                   st.lists(st.tuples(st.sampled_from(HEADER_KEYS), VALUE_TEXT), max_size=6)).map(
    lambda h: " ".join([h[0], h[1].replace("\n", "")] + [f"{k}={v}" for k, v in h[2]]))
STAGE = st.tuples(st.sampled_from(["mbconv", "fused_mbconv", "conv"]),
                  st.lists(st.tuples(st.sampled_from(["r", "k", "s", "e", "c", "se", "x", ""]), VALUE_TEXT),
                           max_size=7), st.booleans()).map(
    lambda s: " ".join([s[0]] + [f"{p}{v}" for p, v in s[1]] + (["fixdepth"] if s[2] else [])))


@FAST
@given(header=HEADER, stages=st.lists(STAGE, max_size=4), noise=st.text(max_size=20))
def test_spec_text_parses_or_names_the_problem(header, stages, noise):
    text = "\n".join([header, *stages]) + (noise if len(noise) % 3 == 0 else "")
    try:
        spec = NetworkSpec.from_text(text)
    except EffscaleError:
        return
    assert NetworkSpec.from_text(spec.to_text()) == spec
    assert spec.num_blocks <= MAX_BLOCKS and spec.resolution <= MAX_RESOLUTION


@FAST
@given(lines=st.lists(st.sampled_from(B0.to_text().splitlines()), min_size=1, max_size=8),
       cut=st.integers(min_value=0, max_value=400), junk=st.text(max_size=5))
def test_mutated_real_spec_text_parses_or_names_the_problem(lines, cut, junk):
    text = "\n".join(lines)
    text = text[:cut] + junk + text[cut:]
    try:
        spec = NetworkSpec.from_text(text)
    except EffscaleError:
        return
    assert NetworkSpec.from_text(spec.to_text()) == spec


# -- scaling coefficients -----------------------------------------------------------------------------------
PHI = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10 ** 400, max_value=10 ** 400),
                st.sampled_from(["1.5", "x", None, True]))
RULE_BASE = st.one_of(st.floats(min_value=1, max_value=3), st.floats(allow_nan=True, allow_infinity=True))


@FAST
@given(phi=PHI, alpha=RULE_BASE, beta=RULE_BASE, gamma=RULE_BASE,
       base=st.sampled_from(["efficientnet_b0", "efficientnet_lite0", "series_b0"]))
def test_compound_scales_or_names_phi(phi, alpha, beta, gamma, base):
    try:
        rule = ScalingRule(alpha, beta, gamma)
        spec = effscale.compound(base, phi, rule)
    except EffscaleError as error:
        assert "phi=" in str(error) or any(f"{k}=" in str(error) for k in ("alpha", "beta", "gamma"))
        return
    assert spec.num_blocks <= MAX_BLOCKS and max(s.out_channels for s in spec.stages) <= MAX_CHANNELS


@FAST
@given(depth=PHI, width=PHI, resolution=PHI, multiple=st.sampled_from([1, 8]))
def test_scale_scales_or_names_the_multiplier(depth, width, resolution, multiple):
    try:
        coefficients = Coefficients(depth=depth, width=width, resolution=resolution)
        spec = effscale.scale(B0, coefficients, resolution_multiple=multiple)
    except EffscaleError as error:
        assert any(f"{k}=" in str(error) for k in ("depth", "width", "resolution")), error
        return
    assert spec.num_blocks <= MAX_BLOCKS and 32 <= spec.resolution <= MAX_RESOLUTION


# -- device profile JSON ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def profile_dict():
    from test_hardware_profile import synthetic_profile

    return json.loads(json.dumps(synthetic_profile().to_dict()))


def _mutate(data, path: list, value, delete: bool):
    """`data` with the node at `path` (indices into dicts' keys / lists) replaced or deleted."""
    data = json.loads(json.dumps(data))
    node, parent, key = data, None, None
    for step in path:
        if isinstance(node, dict) and node:
            parent, key = node, sorted(node)[step % len(node)]
        elif isinstance(node, list) and node:
            parent, key = node, step % len(node)
        else:
            break
        node = parent[key]
    if parent is None:
        return value
    if delete:
        del parent[key]
    else:
        parent[key] = value
    return data


@SLOW
@given(path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=4), value=JSON_VALUES,
       delete=st.booleans())
def test_device_profile_json_loads_or_names_the_problem(profile_dict, path, value, delete):
    from effscale.hardware import load_profile

    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "device.json"
        file.write_text(json.dumps(_mutate(profile_dict, path, value, delete)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                profile = load_profile(file)
            except EffscaleError:
                return
            try:
                ms = profile.predict_latency(effscale.get_spec("efficientnet_lite0"))
            except EffscaleError:
                return
    assert math.isfinite(ms) and ms > 0


@FAST
@given(text=st.one_of(st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
def test_device_profile_garbage_text(text):
    from effscale.hardware import load_profile

    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "device.json"
        file.write_text(text, encoding="utf-8", errors="surrogateescape")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                load_profile(file)
            except EffscaleError:
                pass


# -- safetensors metadata -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_state():
    model = effscale.create_model(TINY, num_classes=3)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


METADATA_KEYS = ["format", "format_version", "spec", "num_classes", "in_chans", "features_only", "extra", "other"]


@SLOW
@given(drop=st.lists(st.sampled_from(METADATA_KEYS), max_size=3),
       change=st.dictionaries(st.sampled_from(METADATA_KEYS),
                              st.one_of(NUMBER_TEXT, st.text(max_size=30), JSON_VALUES.map(json.dumps),
                                        st.just(B0.to_text()), st.just(TINY.to_text()[:30])), max_size=3))
def test_weights_metadata_reads_or_names_the_problem(tiny_state, drop, change):
    from safetensors.torch import save_file

    from effscale.weights import read_metadata

    metadata = {"format": "effscale", "format_version": "1", "spec": TINY.to_text(), "num_classes": "3",
                "in_chans": "3", "features_only": "0", "extra": "{}"}
    for key in drop:
        metadata.pop(key, None)
    metadata.update(change)
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "model.safetensors"
        save_file(tiny_state, str(file), metadata=metadata)
        for read in (read_metadata, effscale.resolve_spec):
            try:
                read(file)
            except EffscaleError:
                pass


# -- study results.json for `plan --accuracy-from` ----------------------------------------------------------------
ROW = st.fixed_dictionaries({"macs": st.one_of(st.integers(min_value=-5, max_value=10 ** 12), JSON_VALUES),
                             "top1": st.one_of(st.floats(min_value=0, max_value=100), JSON_VALUES)},
                            optional={"strategy": st.sampled_from(["compound", "depth", "base", 3]),
                                      "seed": JSON_VALUES})


@FAST
@given(document=st.one_of(st.lists(ROW, max_size=6), st.fixed_dictionaries({"rows": st.lists(ROW, max_size=6)}),
                          JSON_VALUES))
def test_accuracy_rows_fit_or_name_the_problem(document):
    from effscale.hardware.accuracy_curve import AccuracyCurve

    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "results.json"
        file.write_text(json.dumps(document))
        try:
            curve = AccuracyCurve.fit(str(file))
        except EffscaleError:
            return
    for macs in (1, 1e6, 1e12):
        assert math.isfinite(curve(macs))


# -- the command line's arguments -----------------------------------------------------------------------------------
@FAST
@given(option=st.sampled_from(["--phi", "--width", "--depth", "--resolution", "--image-size"]), value=NUMBER_TEXT)
def test_cli_numbers_are_a_result_or_one_line(capsys, tmp_path, monkeypatch, option, value):
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capsys, "info", "efficientnet_b0", f"{option}={value}", "--json")
    _one_line_or_success(code, err)
    assert os.listdir(tmp_path) == []  # nothing written


@FAST
@given(path=st.one_of(st.text(max_size=30), st.sampled_from(["/", ".", "..", "/dev/null", "/proc/self/mem", "~",
                                                            "efficientnet_b0/", "a" * 300, "x.safetensors"])))
def test_cli_model_paths_are_a_result_or_one_line(capsys, tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    if "\x00" in path or path.startswith("-"):
        return  # argv cannot carry NUL; a leading dash is an option to argparse
    code, err = _cli(capsys, "info", path, "--json")
    _one_line_or_success(code, err)
    assert os.listdir(tmp_path) == []


@FAST
@given(kind=st.sampled_from(["idx", "folder", "IDX", "folder ", "", "fashion", "http"]),
       location=st.one_of(st.text(max_size=20), st.sampled_from(["/", "/dev/null", "/proc", "~", ".", "/etc/passwd"])))
def test_data_forms_load_or_name_the_problem(kind, location):
    from effscale.data import load_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load_data(f"{kind}:{location}" if kind else location)
        except EffscaleError:
            pass


@FAST
@given(head=st.one_of(st.sampled_from(["phone", "laptop", "", "Phone", "/dev/null", "/", "missing.json"]),
                      st.text(max_size=10)),
       pairs=st.lists(st.tuples(st.sampled_from(["power_w", "duration_s", "ambient_c", "name", "", "x"]), VALUE_TEXT),
                      max_size=3),
       separators=st.sampled_from(["=", "", "=="]))
def test_sustained_strings_parse_or_name_the_problem(head, pairs, separators):
    from effscale.hardware.thermal import parse_sustained

    text = ",".join([head] + [f"{k}{separators}{v}" for k, v in pairs])
    try:
        model = parse_sustained(text)
    except EffscaleError:
        return
    result = model.sustained(5.0)
    assert math.isfinite(result["final_ms"])
