"""Memory-efficient training: custom autograd functions, activation checkpointing, equivalence."""
import ctypes
import ctypes.util
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import effscale
from effscale.nn import memory
from effscale.spec import NetworkSpec


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation, which a busy CI machine makes costly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A tiny network with every block flavour (MBConv with/without expansion, Fused-MBConv with and
# without expansion, with and without SE, strided and residual) for the whole-model checks.
TINY = NetworkSpec.from_text("""
network tiny res=32 stem=8 head=32 act=swish dropout=0 drop_path=0.3
fused_mbconv r2 k3 s1 e1 c8 se0.25
fused_mbconv r1 k3 s2 e4 c16
mbconv r1 k3 s1 e1 c16 se0.25
mbconv r2 k5 s2 e6 c24 se0.25
""")


def double(*shape, channels_last=False, seed=0):
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_swish_se_gate_and_pooling(channels_last):
    assert torch.autograd.gradcheck(memory.swish, (double(2, 3, 4, 4, channels_last=channels_last),))
    x = double(2, 3, 4, 5, channels_last=channels_last)
    assert torch.autograd.gradcheck(memory.spatial_mean, (x,))
    torch.testing.assert_close(memory.spatial_mean(x), x.mean((2, 3), keepdim=True))
    logits = double(2, 3, 1, 1, seed=1) * 3
    assert torch.autograd.gradcheck(memory.squeeze_excite_gate, (x, logits))
    out = memory.squeeze_excite_gate(x, logits)
    torch.testing.assert_close(out, x * logits.sigmoid(), rtol=0, atol=0)
    assert memory.swish(x).grad_fn.name().endswith("_SwishBackward")


@pytest.mark.parametrize("act", [nn.SiLU(), nn.ReLU(), nn.ReLU6(), None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_batch_norm_act(act, channels_last):
    x = double(4, 3, 3, 3, channels_last=channels_last) * 3  # spans ReLU6's clip at 6 too
    weight = torch.tensor([0.5, 1.5, -1.0], dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)

    def fn(x, weight, bias):  # a stand-in batch norm whose affine parameters gradcheck can perturb
        stats = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        bn = SimpleNamespace(weight=weight, bias=bias, eps=1e-3, momentum=0.1, num_batches_tracked=None,
                             running_mean=stats[0], running_var=stats[1])
        return memory.batch_norm_act(x, bn, act, update_stats=False)

    assert torch.autograd.gradcheck(fn, (x, weight, bias))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_act_matches_modules_and_updates_stats_once(momentum):
    torch.manual_seed(0)
    plain_bn = nn.BatchNorm2d(5, momentum=momentum)
    fused_bn = nn.BatchNorm2d(5, momentum=momentum)
    fused_bn.load_state_dict(plain_bn.state_dict())
    x = torch.randn(4, 5, 6, 6) * 2 + 1
    for _ in range(3):
        reference = nn.functional.silu(plain_bn(x))
        out = memory.batch_norm_act(x, fused_bn, nn.SiLU())
        torch.testing.assert_close(out, reference)
    for key, value in plain_bn.state_dict().items():
        torch.testing.assert_close(fused_bn.state_dict()[key], value, msg=key)
    before = {k: v.clone() for k, v in fused_bn.state_dict().items()}
    memory.batch_norm_act(x, fused_bn, nn.SiLU(), update_stats=False)  # what a checkpoint re-run does
    assert all(torch.equal(before[k], v) for k, v in fused_bn.state_dict().items())


def tiny_model(spec=TINY, **kw):
    torch.manual_seed(0)
    return effscale.create_model(spec, num_classes=5, **kw).double().train()


def train_step(model, x, seed=1):
    """Loss, parameter gradients and BN buffers after one forward/backward (fixed drop-path RNG)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(x)
    loss = (out if torch.is_tensor(out) else torch.cat([o.flatten(1) for o in out], 1)).sin().sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    return loss.detach(), grads, buffers


def assert_same_step(step, reference, rtol=1e-9, atol=1e-11):
    (loss, grads, buffers), (ref_loss, ref_grads, ref_buffers) = step, reference
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    assert grads.keys() == ref_grads.keys() and buffers.keys() == ref_buffers.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=rtol, atol=atol, msg=name)
    for name in ref_buffers:
        torch.testing.assert_close(buffers[name], ref_buffers[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("name,channels_last", [("tiny", False), ("tiny", True), ("efficientnet_b0", False),
                                                 ("efficientnet_lite0", True)])
def test_whole_model_gradients_equal_the_plain_path(name, channels_last):
    spec = TINY if name == "tiny" else effscale.get_spec(name, drop_path_rate=0.2, dropout=0.0)
    size, batch = (32, 3) if name == "tiny" else (64, 2)
    x = torch.randn(batch, 3, size, size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with memory.memory_efficient_ops(False):
        reference = train_step(tiny_model(spec), x)
    assert_same_step(train_step(tiny_model(spec), x), reference)
    checkpointed = tiny_model(spec)
    checkpointed.set_grad_checkpointing()
    assert_same_step(train_step(checkpointed, x), reference)  # running stats updated once, too
    checkpointed = tiny_model(spec)
    checkpointed.set_grad_checkpointing()
    with memory.memory_efficient_ops(False):  # checkpointing alone, plain modules
        assert_same_step(train_step(checkpointed, x), reference)


def test_features_only_pyramid_with_checkpointing():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with memory.memory_efficient_ops(False):
        reference = train_step(tiny_model(features_only=True), x)
    model = tiny_model(features_only=True)
    model.set_grad_checkpointing()
    assert_same_step(train_step(model, x), reference)


def held_bytes(model, x):
    """Heap bytes still allocated after the forward pass: what autograd keeps for backward (+ logits)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc's mallinfo2")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2

    def in_use():
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    model.zero_grad(set_to_none=True)
    before = in_use()
    out = model(x)
    held = in_use() - before
    out.sum().backward()
    return held


def test_set_grad_checkpointing_toggles_and_saves_memory(monkeypatch):
    model = effscale.create_model("efficientnet_b0", num_classes=10).train()
    x = torch.randn(4, 3, 96, 96)
    assert model.grad_checkpointing is False
    for enable in (True, False):  # first calls: one-off allocations (thread pools, caches)
        model.set_grad_checkpointing(enable)
        held_bytes(model, x)
    with memory.memory_efficient_ops(False):
        plain = held_bytes(model, x)
    efficient = held_bytes(model, x)
    model.set_grad_checkpointing()
    assert model.grad_checkpointing is True
    checkpointed = held_bytes(model, x)
    assert efficient < 0.55 * plain and checkpointed < 0.25 * efficient, (plain, efficient, checkpointed)

    calls = []
    real = memory.checkpoint_stage
    monkeypatch.setattr(memory, "checkpoint_stage", lambda stage, x: calls.append(1) or real(stage, x))
    model(x).sum().backward()
    assert len(calls) == len(model.stages)
    calls.clear()
    with torch.no_grad():
        model(x)
    model.eval()(x).sum().backward()
    assert not calls  # only in training with autograd recording
    model.train().set_grad_checkpointing(False)
    model(x).sum().backward()
    assert not calls and model.grad_checkpointing is False


def test_recomputed_activations_step_aside_for_outer_saved_tensor_hooks(monkeypatch):
    packed = []
    real_pack = memory._pack

    def pack(t):
        packed.append(real_pack(t))
        return packed[-1]

    monkeypatch.setattr(memory, "_pack", pack)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with memory.memory_efficient_ops(False):
        reference = train_step(tiny_model(), x)
    assert not packed
    assert_same_step(train_step(tiny_model(), x), reference)
    assert any(isinstance(p, memory._Recompute) for p in packed)  # some conv inputs were recomputed
    packed.clear()
    with torch.autograd.graph.save_on_cpu():  # a user's hooks see every saved tensor
        assert_same_step(train_step(tiny_model(), x), reference)
    assert not packed


def test_in_place_change_before_backward_is_an_error():
    model = effscale.create_model("efficientnet_b0", num_classes=10).train()
    loss = model(torch.randn(2, 3, 64, 64)).sum()
    with torch.no_grad():
        model.stages[1][0].expand.bn.weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation|modified in place"):
        loss.backward()


def test_eval_and_no_grad_use_plain_ops_and_outputs_are_unchanged():
    model = effscale.create_model("efficientnet_b0", num_classes=10)
    model.set_grad_checkpointing()
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with memory.memory_efficient_ops(False):
        reference = model(x)
    out = model(x)
    assert torch.equal(out, reference)

    def custom_nodes(out):
        names, stack, seen = set(), [out.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            names.add(node.name())
            stack.extend(n for n, _ in node.next_functions)
        return {n for n in names if n.startswith("_")}  # effscale's functions: _SwishBackward, ...

    assert not custom_nodes(out)  # eval: plain autograd graph (no custom functions)
    model.train()
    assert custom_nodes(model(x))  # training: the memory-efficient functions are in the graph
    # training-mode forward values equal the plain modules' too (BN batch statistics)
    train_plain = effscale.create_model("efficientnet_b0", num_classes=10)
    train_fast = effscale.create_model("efficientnet_b0", num_classes=10)
    train_fast.load_state_dict(train_plain.state_dict())
    with memory.memory_efficient_ops(False):
        torch.manual_seed(1)  # same dropout / drop-path draws
        expected = train_plain.train()(x)
    torch.manual_seed(1)
    torch.testing.assert_close(train_fast.train()(x), expected, rtol=1e-5, atol=1e-6)


def test_hooks_on_bn_or_act_fall_back_to_the_plain_modules():
    model = effscale.create_model("efficientnet_b0", num_classes=10).train()
    seen = []
    model.stages[1][0].expand.act.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert seen == [(2, 96, 32, 32)]


def test_bf16_autocast_channels_last_training_is_close_to_plain():
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    steps = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = effscale.create_model("efficientnet_b0", num_classes=10, drop_path_rate=0.0)
        model = model.to(memory_format=torch.channels_last).train()
        with memory.memory_efficient_ops(enabled), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        steps.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (ref_loss, ref_grad), (loss, grad) = steps
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-2, atol=1e-2)
    # bf16 rounds at a few different places (e.g. the SE reductions): ~2 % apart, not more
    assert (grad - ref_grad).norm() < 0.05 * ref_grad.norm()
