"""weightgen.nets: shapes, seeded construction, the global RNG left alone, helpful errors."""
from __future__ import annotations

import pytest
import torch

from conftest import net_input

from weightgen.nets import NETS, build_net, parameter_names
from weightgen.registry import RegistryError

DIGITS = (1, 8, 8)

# (name, input_shape, kwargs); every registered net is covered at least with its defaults.
CASES = [
    ("mlp", DIGITS, {"hidden": [8]}),
    ("mlp", (40,), {"hidden": [8, 6], "activation": "tanh"}),
    ("cnn", DIGITS, {"channels": [4, 8]}),
    ("cnn", DIGITS, {"channels": [4, 8], "batchnorm": True}),
    ("vit", DIGITS, {"dim": 16, "depth": 1, "heads": 2}),
    ("timm:resnet18", DIGITS, {"input_size": 32}),
    ("timm:vit_tiny_patch16_224", DIGITS, {"img_size": 32, "patch_size": 8, "depth": 1, "input_size": 32}),
]
# A language model takes token indices and gives logits per position, not (N, classes) from float inputs:
# tests/test_adapters.py covers char-lm.
SEQUENCE_NETS = {"char-lm"}
CASES += [(name, net_input(name), {}) for name in NETS.names() if name not in SEQUENCE_NETS]

IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)]


def _build(name, shape, kwargs, seed=0, num_classes=10):
    return build_net(name, shape, num_classes, seed=seed, **kwargs)


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name,shape,kwargs", CASES, ids=IDS)
def test_forward_shape(name, shape, kwargs):
    net = _build(name, shape, kwargs, num_classes=7).eval()
    with torch.no_grad():
        out = net(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,shape,kwargs", CASES, ids=IDS)
def test_seeding_and_global_rng(name, shape, kwargs):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = _build(name, shape, kwargs, seed=1)
    assert torch.equal(torch.get_rng_state(), before), "building a net changed the global torch RNG"
    b = _build(name, shape, kwargs, seed=1)
    c = _build(name, shape, kwargs, seed=2)
    assert _states_equal(a, b), "same seed gave different weights"
    assert not _states_equal(a, c), "different seeds gave identical weights"


def test_parameter_names_exclude_buffers():
    net = _build("cnn", DIGITS, {"channels": [4, 8], "batchnorm": True})
    names = parameter_names(net)
    assert names == [n for n, _ in net.named_parameters()]
    state = net.state_dict()
    assert set(names) < set(state)
    assert any(k.endswith("running_mean") for k in state) and not any(k.endswith("running_mean") for k in names)
    # state_dict order
    assert names == [k for k in state if k in set(names)]


def test_mlp_layer_sizes():
    net = _build("mlp", DIGITS, {"hidden": [8, 5]}, num_classes=3)
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes == [(8, 64), (8,), (5, 8), (5,), (3, 5), (3,)]


def test_timm_input_size_hook_keeps_timm_names():
    net = _build("timm:resnet18", DIGITS, {"input_size": 32})
    names = parameter_names(net)
    assert names[0] == "conv1.weight" and net.conv1.weight.shape[1] == 1  # in_chans from the input shape
    assert "fc.weight" in names and net.fc.weight.shape[0] == 10


def test_unknown_net_names_available():
    with pytest.raises(RegistryError) as e:
        build_net("mpl", DIGITS, 10)
    msg = str(e.value)
    assert "mpl" in msg and "mlp" in msg
    for name in NETS.names():
        assert name in msg


@pytest.mark.parametrize("name,bad,allowed", [
    ("mlp", "hiden", ["hidden", "activation"]),
    ("cnn", "batch_norm", ["channels", "batchnorm"]),
    ("vit", "dims", ["patch", "dim", "depth", "heads", "mlp_ratio"]),
])
def test_unknown_kwarg_names_allowed(name, bad, allowed):
    with pytest.raises(RegistryError) as e:
        build_net(name, DIGITS, 10, **{bad: 1})
    msg = str(e.value)
    assert bad in msg
    for a in allowed:
        assert a in msg
    assert "input_shape" not in msg and "num_classes" not in msg


def test_unknown_timm_arch():
    with pytest.raises(RegistryError, match="resnet1'"):
        build_net("timm:resnet1", DIGITS, 10)


def test_bad_input_shapes():
    with pytest.raises(ValueError, match="cnn"):
        build_net("cnn", (64,), 10)
    with pytest.raises(ValueError, match="patch"):
        build_net("vit", (1, 7, 7), 10)
    with pytest.raises(ValueError, match="activation"):
        build_net("mlp", DIGITS, 10, activation="swish")
