"""Dense-prediction decoders (none, fcn, fpn, unet, ida_up) built from IR nodes on any encoder pattern."""
import pytest
import torch
from conftest import tiny_spec
from test_fusion import RECORDED, RECORDED_TINY, ir_params, trainable

from dlasearch import compile, zoo
from dlasearch.decoders import DECODERS
from dlasearch.ir import IRError, fingerprint, infer_shapes
from dlasearch.ir.features import stage_outputs
from dlasearch.patterns import build

ENCODERS = ("chain", "skip", "ida", "hda", "dla")


def seg(pattern="dla", **kw):
    return build(tiny_spec(pattern, task="segment", **kw))


@pytest.mark.parametrize("pattern", ENCODERS)
@pytest.mark.parametrize("decoder", DECODERS)
def test_every_decoder_gives_logits_at_odd_input_sizes(decoder, pattern):
    g = seg(pattern, decoder=decoder)
    m = compile(g).eval()
    for size in ((37, 45), (33, 30)):
        with torch.no_grad():
            y = m(torch.randn(1, 3, *size))
        assert y.shape == (1, 10, *size)
        (out,) = g.of_kind("output")
        assert infer_shapes(g, size)[out] == (10, *size)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoder_params_from_the_ir_equal_the_module(decoder):
    for kw in ({}, {"first_level": 0}, {"first_level": 3}, {"decoder_channels": 24}):
        if decoder in ("none", "fcn") and "decoder_channels" in kw:
            continue
        g = seg(decoder=decoder, **kw)
        m = compile(g)
        assert trainable(m) == ir_params(g), kw


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoders_train_end_to_end(decoder):
    """Every parameter (every decoder node, the encoder through it) gets a gradient."""
    m = compile(seg(decoder=decoder))
    y = m(torch.randn(2, 3, 35, 29))
    torch.nn.functional.cross_entropy(y, torch.randint(0, 10, (2, 35, 29))).backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


@pytest.mark.parametrize("name", sorted(zoo.UP_MODELS))
def test_ida_up_through_the_spec_is_the_published_dla_up(name):
    c = zoo.MODELS[zoo.UP_MODELS[name]]
    spec = zoo.spec(c.levels, c.channels, c.block, c.cardinality, c.residual_root, 19, "segment")
    explicit = build({**spec, "decoder": "ida_up", "decoder_channels": None})
    assert fingerprint(explicit) == fingerprint(zoo.ir(name)) == RECORDED[name]


def test_ida_up_default_keeps_existing_segment_specs():
    for pattern in ("chain", "skip", "ida", "tree", "reentrant", "hda", "dla"):
        assert fingerprint(seg(pattern, decoder="ida_up")) == RECORDED_TINY[pattern, "segment"]


def test_ida_up_decoder_channels_sets_one_width():
    g = seg(decoder="ida_up", decoder_channels=24)
    assert {g.nodes[n]["out"] for n in g.of_kind("aggregate") if n.startswith("dla_up.")} == {24}
    assert fingerprint(g) != RECORDED_TINY["dla", "segment"]


def test_decoder_structure():
    """What each decoder aggregates, and how: the IR says it (fusion modes, upsampling, widths)."""
    def aggs(g):
        return [g.nodes[n] for n in g.of_kind("aggregate") if n.startswith("decoder.")]

    none = seg(decoder="none")
    assert not aggs(none) and len(none.of_kind("head")) == 1
    fcn = seg(decoder="fcn")  # scores at the 3 deepest stages, 2 parameter-free sums
    assert len(fcn.of_kind("head")) == 3
    assert [(d["mode"], d["conv"], d["out"]) for d in aggs(fcn)] == [("sum", False, 10)] * 2
    fcn16 = seg(decoder="fcn", first_level=3)  # first_level leaves two stages: FCN-16s
    assert len(fcn16.of_kind("head")) == 2
    fpn = seg(decoder="fpn", decoder_channels=16)
    assert [(d["mode"], d["conv"], d["out"]) for d in aggs(fpn)] == [("sum", False, 16)] * 3
    ups = [fpn.nodes[n] for n in fpn.of_kind("upsample") if n.startswith("decoder.")]
    assert ups and all(u["mode"] == "nearest" for u in ups)
    unet = seg(decoder="unet")
    assert [(d["mode"], d["conv"], d["kernel"], d["out"]) for d in aggs(unet)] == [("concat", True, 3, 32)] * 3


def test_decoders_keep_the_encoder_stages():
    """features_only cuts every decoder off: the stage outputs are the encoder's."""
    stages = {d: stage_outputs(seg(decoder=d)) for d in DECODERS}
    assert len({tuple(s) for s in stages.values()}) == 1 and len(stages["fpn"]) == 4


@pytest.mark.parametrize("bad, match", [
    ({"task": "segment", "decoder": "fnp"},
     r"spec.decoder='fnp': unknown decoder \(did you mean 'fpn'\?\); allowed: none, fcn, fpn, unet, ida_up"),
    ({"task": "segment", "decoder": None}, r"spec.decoder=None: unknown decoder"),
    ({"task": "segment", "decoder_channels": 0}, r"spec.decoder_channels=0: expected null .* or an int >= 1"),
    ({"task": "segment", "decoder_channels": True}, r"spec.decoder_channels=True"),
    ({"task": "segment", "decoder_channels": 8.5}, r"spec.decoder_channels=8.5"),
    ({"decoder": "fpn"}, r"spec.decoder='fpn': a decoder needs task=segment \(task='classify'\)"),
    ({"decoder_channels": 16}, r"spec.decoder_channels=16: a decoder needs task=segment"),
    ({"task": "segment", "decoder": "fcn", "decoder_channels": 16}, r"decoder 'fcn' has no width of its own"),
    ({"task": "segment", "decoder": "fpn", "first_level": 4}, r"spec.first_level=4: expected 0..3"),
    ({"task": "segment", "decodr": "fpn"}, r"unknown key 'decodr' \(did you mean 'decoder'\?\)"),
])
def test_bad_decoder_specs_name_the_field(bad, match):
    with pytest.raises(IRError, match=match) as e:
        build(tiny_spec(**bad))
    assert "\n" not in str(e.value)
