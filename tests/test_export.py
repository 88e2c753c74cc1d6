"""Compiled modules are plain fx code: torch.export and torch.compile accept them and agree with eager."""
import pytest
import torch

from conftest import tiny_spec
from dlasearch import compile
from dlasearch.patterns import build


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return compile(build(tiny_spec("dla", task="segment", num_classes=3))).eval()


def test_torch_export_matches_eager(model):
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x))


def test_torch_compile_matches_eager(model):
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_generated_code_frees_intermediates(model):
    code = model.code
    assert "= None" in code
    assert "for " not in code and "getattr(self, node" not in code
