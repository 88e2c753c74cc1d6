"""The zoo reproduces the published DLA models: counts, MACs, checkpoint layout and numerics."""
import pytest
import torch

from dlasearch import measure, zoo
from original_dla import DLASeg, original

CLASSIFIERS = ["dla34", "dla46_c", "dla46x_c", "dla60x_c", "dla60", "dla60x", "dla102", "dla102x",
               "dla102x2", "dla169"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_reference_parity(name, reference):
    ref = reference[name]
    m = zoo.create(name, 1000)
    assert measure.params(m) == ref["params_1000_classes"]
    assert measure.params(zoo.create(name, 10)) == ref["params_10_classes"]
    assert measure.macs(m, (1, 3, 224, 224)) == ref["macs_224"]
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == {k: s for k, s in ref["state_dict"]}


@pytest.mark.parametrize("name,expected", [("dla34up", 2_310_400), ("dla60up", 8_968_192),
                                           ("dla102up", 8_968_192), ("dla169up", 8_968_192)])
def test_dla_up_stack_params(name, expected):
    m = zoo.create(name, 19)
    assert sum(p.numel() for k, p in m.named_parameters() if k.startswith("dla_up.")) == expected


@pytest.mark.parametrize("name", ["dla34", "dla46x_c", "dla60x_c", "dla102x2"])
def test_numerics_equal_original(name):
    torch.manual_seed(0)
    orig = original(name).eval()
    ours = zoo.create(name).eval()
    sd = zoo.convert_original(orig.state_dict())
    assert set(orig.state_dict()) - set(sd) and set(sd) == set(ours.state_dict())
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = orig(x), ours(x)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


def test_convert_original_drops_exactly_the_dead_entries(reference):
    for name in ["dla34", "dla102", "dla169"]:
        sd = original(name).state_dict()
        dropped = sorted(set(sd) - set(zoo.convert_original(sd)))
        assert dropped == sorted(reference[name]["dead_entries"])
        prefixed = {f"module.{k}": v for k, v in sd.items()}
        assert zoo.convert_original(prefixed).keys() == zoo.convert_original(sd).keys()


def test_segmentation_checkpoint_loads_and_matches():
    torch.manual_seed(0)
    orig = DLASeg("dla34", 19).eval()
    ours = zoo.create("dla34up", 19).eval()
    ours.load_state_dict(zoo.convert_original(orig.state_dict()), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), orig(x))
    assert not ours.get_parameter("up.weight").requires_grad


@pytest.mark.parametrize("size", [32, 48, 100, 200, (33, 57)])
def test_any_input_size(size):
    h, w = (size, size) if isinstance(size, int) else size
    m = zoo.create("dla46_c", 10).eval()
    assert m(torch.randn(1, 3, h, w)).shape == (1, 10)
    seg = zoo.create("dla34up", 5).eval()
    with torch.no_grad():
        assert seg(torch.randn(1, 3, h, w)).shape == (1, 5, h, w)


def test_original_fails_where_ours_works():
    orig = original("dla34").eval()
    with pytest.raises(RuntimeError):
        orig(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("name", ["dla34", "dla60x_c", "dla34up"])
def test_every_parameter_gets_a_gradient(name):
    m = zoo.create(name, 10).train()
    out = m(torch.randn(2, 3, 64, 64))
    out.float().pow(2).mean().backward()
    missing = [k for k, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


def test_init_follows_the_original():
    torch.manual_seed(0)
    m = zoo.create("dla34")
    w = m.get_parameter("level5.root.conv.weight")
    assert abs(w.std().item() - (2.0 / 512) ** 0.5) < 0.1 * (2.0 / 512) ** 0.5
    bn = m.get_submodule("level5.root.bn")
    assert (bn.weight == 1).all() and (bn.bias == 0).all() and bn.eps == 1e-5 and bn.momentum == 0.1


def test_unknown_zoo_name_suggests():
    with pytest.raises(zoo.IRError, match="did you mean 'dla34'"):
        zoo.create("dla35")


def test_generic_builders_validate_arguments():
    with pytest.raises(zoo.IRError, match="levels"):
        zoo.dla([1, 1, 1], [16, 32, 64])
    with pytest.raises(zoo.IRError, match="cardinality"):
        zoo.dla([1, 1, 1, 1, 1, 1], [16, 32, 48, 64, 64, 64], block="bottleneckx")
    g = zoo.dla([1, 1, 1, 1, 1, 1], [8, 16, 32, 32, 64, 64], num_classes=7)
    assert g.nodes["fc"]["classes"] == 7
    seg = zoo.dla_up([1, 1, 1, 1, 1, 1], [8, 16, 32, 32, 64, 64], num_classes=3)
    assert seg.nodes["up"]["learnable"] is False
