"""Modules built from specs: shapes, feature pyramid, names, and the deployment paths."""
import pytest
import torch

import effscale
from effscale import EffscaleError
from effscale.nn import fold_batchnorm, prepare_for_inference
from effscale.nn.layers import Conv2dSame


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Untrained nets give near-zero logits; random BN statistics make outputs informative."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def small_model(name="efficientnet_b0", **kw):
    torch.manual_seed(0)
    return randomise_bn(effscale.create_model(name, **kw)).eval()


def test_forward_shapes_and_names():
    model = small_model(num_classes=10)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 1280, 2, 2)
    names = dict(model.named_modules())
    for name in ("stem.conv", "stages.0.0.depthwise.conv", "stages.0.0.se.reduce", "stages.1.0.expand.bn",
                 "stages.6.0.project.conv", "head.conv", "classifier"):
        assert name in names
    assert "stages.0.0.expand" not in names  # expand ratio 1 has no expansion conv


def test_features_only_pyramid():
    model = small_model(features_only=True)
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    assert [f["num_chs"] for f in model.feature_info] == [16, 24, 40, 112, 320]
    features = model(torch.randn(1, 3, 128, 128))
    assert [f.shape[1] for f in features] == [16, 24, 40, 112, 320]
    assert [128 // f.shape[-1] for f in features] == [2, 4, 8, 16, 32]
    names = dict(model.named_modules())
    assert all(info["module"] in names for info in model.feature_info)
    assert "classifier" not in names and "head" not in names
    b3 = effscale.create_model("efficientnet_b3", features_only=True)
    assert [f["num_chs"] for f in b3.feature_info] == [24, 32, 48, 136, 384]


def test_reset_classifier_and_in_chans():
    model = small_model(in_chans=1)
    model.reset_classifier(7)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    model.reset_classifier(0)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1280)
    with pytest.raises(EffscaleError, match="num_classes=-1"):
        model.reset_classifier(-1)
    with pytest.raises(EffscaleError, match="in_chans=0"):
        effscale.create_model("efficientnet_b0", in_chans=0)


def test_drop_path_only_in_training_and_linear():
    model = effscale.create_model("efficientnet_b0", drop_path_rate=0.5)
    rates = [m.rate for m in model.modules() if m.__class__.__name__ == "DropPath"]
    assert rates == sorted(rates) and rates[-1] < 0.5
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), model(x))


def test_drop_path_drops_whole_samples_at_its_rate_and_rescales_the_rest():
    from effscale.nn.layers import DropPath

    rate, samples = 0.3, 20_000
    drop = DropPath(rate).train()
    x = torch.rand(samples, 2, 3, 3) + 1  # no zeros of its own
    torch.manual_seed(0)
    out = drop(x)
    dropped = (out == 0).flatten(1).all(1)
    kept = ~dropped
    assert torch.equal((out == 0).flatten(1).any(1), dropped)  # a sample is dropped whole or not at all
    # binomial: the dropped fraction's standard deviation is sqrt(0.3 * 0.7 / 20000) = 0.0032
    assert abs(dropped.float().mean().item() - rate) < 0.015
    torch.testing.assert_close(out[kept], x[kept] / (1 - rate))  # the expectation is unchanged
    torch.manual_seed(1)
    assert not torch.equal(drop(x), out)  # a new draw each call
    assert torch.equal(drop.eval()(x), x)


def test_drop_path_in_a_residual_block_keeps_only_the_shortcut_of_dropped_samples():
    spec = effscale.NetworkSpec.from_text("network one res=32 stem=8 head=8 dropout=0 drop_path=0.5\n"
                                          "mbconv r2 k3 s1 e2 c8 se0.25")
    block = effscale.create_model(spec, num_classes=2).stages[0][1]  # the second block has a residual
    assert block.drop_path.rate > 0 and block.has_residual
    x = torch.randn(400, 8, 4, 4)
    block.train()
    torch.manual_seed(0)
    out = block(x)
    shortcut_only = (out - x).flatten(1).abs().amax(1) == 0
    assert 0.05 < shortcut_only.float().mean().item() < 0.95  # some samples dropped, some kept
    block.eval()
    assert torch.equal(block(x), block(x)) and not ((block(x) - x).flatten(1).abs().amax(1) == 0).any()


def test_same_padding_matches_tf_output_sizes():
    model = small_model("efficientnet_b0", padding="same")
    assert any(isinstance(m, Conv2dSame) for m in model.modules())
    for size in (64, 65, 97):  # odd sizes: TF pads more at the bottom/right
        feats = effscale.create_model("efficientnet_b0", padding="same", features_only=True).eval()(
            torch.randn(1, 3, size, size))
        expected, out = [], size
        for _ in range(5):
            out = -(-out // 2)
            expected.append(out)
        assert [f.shape[-1] for f in feats] == expected
    assert model(torch.randn(1, 3, 65, 65)).shape == (1, 1000)


def test_bn_fold_and_channels_last_are_equivalent():
    model = small_model()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        reference = model(x)
        fast = prepare_for_inference(small_model())(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(EffscaleError, match="eval-mode"):
        fold_batchnorm(effscale.create_model("efficientnet_b0").train())


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0"])
def test_channels_last_and_bf16_autocast(name):
    model = small_model(name)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        out_cl = model(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, reference, rtol=1e-4, atol=1e-4)
    assert out_bf16.dtype == torch.bfloat16
    # bf16 has 8 mantissa bits: predictions agree, values to a couple of percent of the logit scale
    assert (out_bf16.float() - reference).abs().max() < 0.1 * reference.abs().max()
    assert torch.equal(out_bf16.float().argmax(1), reference.argmax(1))


def test_backward_with_channels_last_bf16():
    model = effscale.create_model("efficientnet_lite0", num_classes=5).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_torch_compile():
    # One stage-deep B0 with TF 'same' padding: swish, squeeze-excite, both paddings' code paths
    # (stride-1 symmetric, stride-2 same) and every block type's forward, at a tenth of the
    # compile time of the full network (compile time grows with the number of blocks).
    model = small_model(effscale.compound("efficientnet_b0", -4).replace(resolution=64), padding="same")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(x), reference, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name,padding", [("efficientnet_b0", "symmetric"), ("efficientnet_lite0", "same")])
def test_torch_export(name, padding):
    model = small_model(name, padding=padding)
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-4)


def test_prepare_for_inference_options_keep_the_function():
    x = torch.randn(2, 3, 64, 64)
    reference_model = small_model()
    with torch.no_grad():
        reference = reference_model(x)
        keys = {k for k in reference_model.state_dict() if ".bn." not in k}
        plain = prepare_for_inference(small_model(), channels_last=False)
        torch.testing.assert_close(plain(x), reference, rtol=1e-4, atol=1e-4)
        assert keys <= set(plain.state_dict())  # only the folded BN entries are gone
        bf16 = prepare_for_inference(small_model(), bf16=True)
        out = bf16(x.contiguous(memory_format=torch.channels_last))
        assert out.dtype == torch.float32
        assert torch.equal(out.argmax(1), reference.argmax(1))
        assert (out - reference).abs().max() < 0.1 * reference.abs().max()
        pyramid = prepare_for_inference(small_model(features_only=True), bf16=True)(x)
        assert [f.dtype for f in pyramid] == [torch.float32] * 5


def test_se_before_the_depthwise_conv_is_a_spec_option_every_path_follows():
    from effscale.spec import NetworkSpec

    spec = effscale.get_spec("efficientnet_b0").replace(se_position="before_dw", resolution=64)
    assert "se_position=before_dw" in spec.to_text() and NetworkSpec.from_text(spec.to_text()) == spec
    assert "se_position" not in effscale.get_spec("efficientnet_b0").to_text()  # older texts unchanged
    model = small_model(spec)
    assert model.stages[0][0].layer_names == ("se", "depthwise", "project")  # no expansion: SE gates the input
    assert model.stages[1][0].layer_names == ("expand", "se", "depthwise", "project")
    after, before = effscale.cost(spec.replace(se_position="after_dw")), effscale.cost(spec)
    assert before.params == after.params and before.macs == after.macs
    scale = {row.name: row for row in before.layers if row.kind == "se_scale"}
    depthwise = {row.name: row for row in before.layers if row.kind == "depthwise"}
    # the gate now works on the depthwise conv's input: before the stride, at the larger size
    assert scale["stages.1.0.se.scale"].out_hw == depthwise["stages.1.0.depthwise.conv"].in_hw
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in effscale.create_model(spec.replace(se_position="after_dw")).parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        # the in-place SE must not overwrite a block input the residual still needs
        fast = prepare_for_inference(small_model(spec))(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(EffscaleError, match="se_position='middle' is unknown; allowed: after_dw, before_dw"):
        spec.replace(se_position="middle")
