"""`effscale info --roofline`: each layer's bound on a device, memory- vs compute-bound by its
intensity against the ridge point, and the bytes fused depthwise + pointwise pairs would not move."""
import json

import pytest

import effscale
from effscale import EffscaleError
from effscale.cli import main
from effscale.hardware.roofline import roofline

PEAK, BANDWIDTH = 100e9, 10e9  # ridge: 10 FLOP/byte


def test_each_layer_is_bound_by_the_slower_of_compute_and_traffic():
    view = roofline("efficientnet_lite0", peak_flops=PEAK, bandwidth=BANDWIDTH)
    layers = {layer.name: layer for layer in effscale.cost("efficientnet_lite0").layers}
    assert view["ridge_flop_per_byte"] == pytest.approx(10.0)
    for row in view["layers"]:
        layer = layers[row["name"]]
        moved = layer.bytes_read + layer.bytes_written
        assert row["ms"] == pytest.approx(max(2 * layer.macs / PEAK, moved / BANDWIDTH) * 1e3)
        assert row["bound"] == ("memory" if layer.intensity <= 10.0 else "compute")
    kinds = {row["kind"]: row["bound"] for row in view["layers"]}
    assert kinds["depthwise"] == "memory" and kinds["pool"] == "memory"
    assert view["bound_ms"] == pytest.approx(sum(row["ms"] for row in view["layers"]))
    # a faster memory moves the depthwise convs' bound, not the dense convs' compute bound
    faster = roofline("efficientnet_lite0", peak_flops=PEAK, bandwidth=10 * BANDWIDTH)
    assert faster["memory_bound_share"] < view["memory_bound_share"]


def test_fusion_saves_the_depthwise_output_without_se_and_the_gated_copy_with_it():
    lite = roofline("efficientnet_lite0", peak_flops=PEAK, bandwidth=BANDWIDTH)
    layers = {layer.name: layer for layer in effscale.cost("efficientnet_lite0").layers}
    assert len(lite["fusion"]) == 16 and {f["pair"] for f in lite["fusion"]} == {"depthwise+project"}
    first = lite["fusion"][0]
    assert first["bytes_saved"] == 2 * layers[f"{first['block']}.depthwise.conv"].bytes_written
    assert lite["fusion_ms_saved"] == pytest.approx(lite["fusion_bytes_saved"] / BANDWIDTH * 1e3)
    b0 = roofline("efficientnet_b0", peak_flops=PEAK, bandwidth=BANDWIDTH, batch=2, dtype="bf16")
    assert {f["pair"] for f in b0["fusion"]} == {"se_scale+project"}
    b0_layers = {layer.name: layer for layer in effscale.cost("efficientnet_b0", batch=2, dtype="bf16").layers}
    block = b0["fusion"][3]["block"]
    assert b0["fusion"][3]["bytes_saved"] == 2 * b0_layers[f"{block}.se.scale"].bytes_written


def test_cli_roofline_from_a_device_profile_and_bad_input(tmp_path, capsys):
    from test_hardware_profile import synthetic_profile  # a valid profile, built without measuring

    path = synthetic_profile(peak_flops=PEAK, bandwidth=BANDWIDTH).save(tmp_path / "device.json")
    assert main(["info", "efficientnet_b0", "--roofline", "--device", str(path), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["peak_flops"] == PEAK and view["peaks_from"].startswith("device profile")
    with pytest.raises(EffscaleError, match="bandwidth=0 must be a positive number"):
        roofline("efficientnet_b0", peak_flops=PEAK, bandwidth=0)
