"""The zoo reproduces the published DLA models: counts, MACs, checkpoint layout and numerics."""
import pytest
import torch
import torch.nn.functional as F

from dlasearch import measure
from dlasearch import zoo
from numerics import CASES, load_case, original_weights

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


def test_every_numerics_case_is_present():
    assert len(CASES) == 9 and {"dla34_224", "dla34up_64x96"} <= set(CASES)


@pytest.mark.parametrize("case_name", CASES)
def test_numerics_equal_original(case_name):
    """Loading the original's weights through convert_original gives the original's outputs, eval and train."""
    case = load_case(case_name)
    name = case["model"].rsplit("_", 1)[0]
    ours = zoo.create(name, case["num_classes"])
    sd = zoo.convert_original(original_weights(case))
    ours.load_state_dict(sd, strict=True)
    # Relative error norms: eval mode is float rounding (~1e-7). Train mode normalises deep 2x2 maps
    # over a batch of 2 (8 values per channel), which amplifies rounding to ~3e-4 at most; a wrong
    # weight or wiring gives errors of order 1.
    for mode, tol in (("eval", 1e-5), ("train", 1e-3)):
        ours.train(mode == "train")
        with torch.no_grad():
            got = ours(case["x"])
        if case["kind"] == "segment":
            got = F.log_softmax(got, 1)
        want = case[f"y_{mode}"]
        assert got.shape == want.shape
        rel = ((got - want).norm() / want.norm()).item()
        assert rel < tol, f"{case_name} ({mode}): relative error {rel:.2e} >= {tol:g}"


def test_convert_original_drops_exactly_the_dead_entries(reference):
    for name in ["dla34", "dla102", "dla169"]:
        ref = reference[name]
        names = [k for k, _ in ref["state_dict"]] + ref["dead_entries"]
        sd = {k: torch.zeros(1) for k in names}
        dropped = sorted(set(sd) - set(zoo.convert_original(sd)))
        assert dropped == sorted(ref["dead_entries"])
        prefixed = {f"module.{k}": v for k, v in sd.items()}
        assert zoo.convert_original(prefixed).keys() == zoo.convert_original(sd).keys()


def test_fixture_entries_are_the_references_live_and_dead_entries(reference):
    """The numerics fixtures and the published facts describe the same original models."""
    for case_name in ("dla34_224", "dla60x_c_64"):
        case = load_case(case_name)
        ref = reference[case["model"].rsplit("_", 1)[0]]
        live = {k: s for k, s in ref["state_dict"] if not k.startswith("fc.")}
        have = {k: list(s) for k, s in case["original_state_dict"].items() if not k.startswith("fc.")}
        assert set(have) == set(live) | set(ref["dead_entries"])
        assert all(have[k] == live[k] for k in live)


def test_segmentation_checkpoint_keeps_its_fixed_upsampling():
    case = load_case("dla34up_64x96")
    ours = zoo.create("dla34up", case["num_classes"])
    ours.load_state_dict(zoo.convert_original(original_weights(case)), strict=True)
    assert not ours.get_parameter("up.weight").requires_grad


@pytest.mark.parametrize("size", [32, 48, 100, 200, (33, 57)])
def test_any_input_size(size):
    h, w = (size, size) if isinstance(size, int) else size
    m = zoo.create("dla46_c", 10).eval()
    assert m(torch.randn(1, 3, h, w)).shape == (1, 10)
    seg = zoo.create("dla34up", 5).eval()
    with torch.no_grad():
        assert seg(torch.randn(1, 3, h, w)).shape == (1, 5, h, w)


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
