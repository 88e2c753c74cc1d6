"""Record the zero-cost proxies' reference values on two small networks into ``fixtures.json``.

Each ``*_reference`` function re-implements one published code path step by step, in the order
and with the data types its repository uses (README.md here cites every file and says what each
step is); none of it comes from ``dlasearch.search.proxies``, which the tests then compare with
these values. dlasearch only builds the networks (``patterns.build`` + ``compile(seed=...)``)
and names the feature map the head pools.

    OMP_NUM_THREADS=1 .venv/bin/python tests/reference/proxies/make_fixtures.py
"""
from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from dlasearch import compile
from dlasearch.patterns import build

HERE = Path(__file__).resolve().parent
NETWORKS = {
    "dla_tiny": {"seed": 0, "spec": {
        "pattern": "dla", "num_classes": 10, "in_channels": 3, "stem": {"channels": 8, "kernel": 3},
        "conv_stages": [{"convs": 1, "channels": 8, "stride": 1}, {"convs": 1, "channels": 16, "stride": 2}],
        "stages": [{"blocks": 2, "channels": 16}, {"blocks": 4, "channels": 32}, {"blocks": 2, "channels": 32}]}},
    "hda_bottleneck": {"seed": 1, "spec": {
        "pattern": "hda", "num_classes": 10, "in_channels": 3, "block": "bottleneck",
        "stem": {"channels": 16, "kernel": 3},
        "conv_stages": [{"convs": 1, "channels": 16, "stride": 1}, {"convs": 1, "channels": 24, "stride": 2}],
        "stages": [{"blocks": 2, "channels": 24}, {"blocks": 2, "channels": 48}]}},
}
BATCH = {"seed": 0, "shape": [16, 3, 32, 32], "labels": "arange(16) % 10"}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(BATCH["seed"])
    return torch.randn(*BATCH["shape"], generator=gen), torch.arange(BATCH["shape"][0]) % 10


def network(name: str) -> fx.GraphModule:
    d = NETWORKS[name]
    return compile(build(d["spec"]), seed=d["seed"])


# ---- zero-cost-nas (SamsungLabs): foresight/pruners/{predictive,p_utils}.py, measures/*.py ----

def _no_op(self, x):
    return x


def copynet(net: nn.Module, bn: bool) -> nn.Module:
    """predictive.copynet: a deep copy whose BatchNorms pass their input through when bn=False."""
    net = copy.deepcopy(net)
    if not bn:
        for layer in net.modules():
            if isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)):
                layer.forward = types.MethodType(_no_op, layer)
    return net


def get_layer_metric_array(net: nn.Module, metric) -> list:
    return [metric(layer) for layer in net.modules() if isinstance(layer, (nn.Conv2d, nn.Linear))]


def sum_arr(arr) -> float:
    """predictive.find_measures: a float accumulating torch.sum of every per-layer array."""
    total = 0.0
    for a in arr:
        total += torch.sum(a)
    return total.item()


def synflow_reference(net, inputs, bn: bool = False) -> float:
    """measures/synflow.py: 'synflow' is the bn=False copy, 'synflow_bn' the bn=True one."""
    net = copynet(net, bn)
    with torch.no_grad():  # linearize: every state_dict entry made positive
        for param in net.state_dict().values():
            param.abs_()
    net.zero_grad()
    net.double()
    ones = torch.ones([1] + list(inputs[0, :].shape)).double()
    torch.sum(net.forward(ones)).backward()
    return sum_arr(get_layer_metric_array(net, lambda l: torch.abs(l.weight * l.weight.grad)
                                          if l.weight.grad is not None else torch.zeros_like(l.weight)))


def _snip_conv(self, x):
    return F.conv2d(x, self.weight * self.weight_mask, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _snip_linear(self, x):
    return F.linear(x, self.weight * self.weight_mask, self.bias)


def snip_reference(net, inputs, targets) -> float:
    """measures/snip.py: a ones mask on every weight; the score is |dL/dmask|."""
    net = copynet(net, True)
    for layer in net.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layer.weight_mask = nn.Parameter(torch.ones_like(layer.weight))
            layer.weight.requires_grad = False
        if isinstance(layer, nn.Conv2d):
            layer.forward = types.MethodType(_snip_conv, layer)
        if isinstance(layer, nn.Linear):
            layer.forward = types.MethodType(_snip_linear, layer)
    net.zero_grad()
    F.cross_entropy(net.forward(inputs), targets).backward()
    return sum_arr(get_layer_metric_array(
        net, lambda l: torch.abs(l.weight_mask.grad) if l.weight_mask.grad is not None else torch.zeros_like(l.weight)))


def grad_norm_reference(net, inputs, targets) -> float:
    """measures/grad_norm.py: the L2 norm of every layer's weight gradient."""
    net = copynet(net, True)
    net.zero_grad()
    F.cross_entropy(net.forward(inputs), targets).backward()
    return sum_arr(get_layer_metric_array(
        net, lambda l: l.weight.grad.norm() if l.weight.grad is not None else torch.zeros_like(l.weight)))


# ---- nas-without-training (BayesWatch): score_networks.py, scores.py ----

def relu_modules(gm: fx.GraphModule) -> fx.GraphModule:
    """The same network with each torch.relu call made an nn.ReLU module, which the reference hooks."""
    gm = copy.deepcopy(gm)
    for i, n in enumerate([n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.relu]):
        gm.add_submodule(f"naswot_relu{i}", nn.ReLU())
        with gm.graph.inserting_after(n):
            m = gm.graph.call_module(f"naswot_relu{i}", n.args)
        n.replace_all_uses_with(m)
        gm.graph.erase_node(n)
    gm.recompile()
    return gm


def naswot_reference(network, x, target) -> float:
    network = relu_modules(network)
    batch_size = x.shape[0]
    network.K = np.zeros((batch_size, batch_size))

    def counting_forward_hook(module, inp, out):
        try:
            if not module.visited_backwards:
                return
            if isinstance(inp, tuple):
                inp = inp[0]
            inp = inp.view(inp.size(0), -1)
            codes = (inp > 0).float()
            network.K = network.K + (codes @ codes.t()).numpy() + ((1. - codes) @ (1. - codes.t())).numpy()
        except AttributeError:  # the first (jacobian) pass, before any backward visited the module
            pass

    def counting_backward_hook(module, inp, out):
        module.visited_backwards = True

    for _, module in network.named_modules():
        if "ReLU" in str(type(module)):
            module.register_forward_hook(counting_forward_hook)
            module.register_full_backward_hook(counting_backward_hook)
    x2 = torch.clone(x)
    x = x.clone().requires_grad_(True)  # get_batch_jacobian
    network.zero_grad()
    y = network(x)
    y.backward(torch.ones_like(y))
    network(x2)
    _, logdet = np.linalg.slogdet(network.K)  # scores.hooklogdet
    return float(logdet)


# ---- ZenNAS (idstcv): ZeroShotProxy/compute_zen_score.py ----

def network_weight_gaussian_init(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return net


class _Found(Exception):
    pass


class PreGAP(fx.Interpreter):
    """``forward_pre_GAP``: run the network until the node holding the feature map the head pools."""

    def __init__(self, gm: fx.GraphModule, target: str):
        super().__init__(gm)
        self.target = target

    def run_node(self, n):
        out = super().run_node(n)
        if n.name == self.target:
            self.found = out
            raise _Found()  # stop: nothing after the feature map runs
        return out

    def __call__(self, x):
        try:
            self.run(x)
        except _Found:
            return self.found
        raise LookupError(self.target)


def zen_reference(model, shape, mixup_gamma: float = 1e-2, repeat: int = 1, seed: int = 0) -> float:
    """compute_nas_score on a fresh (train-mode) model; the draws from the global generator seeded."""
    head = model.ir.of_kind("head")[0]
    target = model.node_map[model.ir.inputs(head)[0]]
    model = copy.deepcopy(model)
    pre_gap = PreGAP(model, target)
    torch.manual_seed(seed)
    nas_score_list = []
    with torch.no_grad():
        for _ in range(repeat):
            network_weight_gaussian_init(model)
            inp = torch.randn(size=list(shape), dtype=torch.float32)
            inp2 = torch.randn(size=list(shape), dtype=torch.float32)
            mixup_input = inp + mixup_gamma * inp2
            output = pre_gap(inp)
            mixup_output = pre_gap(mixup_input)
            nas_score = torch.mean(torch.sum(torch.abs(output - mixup_output), dim=[1, 2, 3]))
            log_bn_scaling_factor = 0.0
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    log_bn_scaling_factor += torch.log(torch.sqrt(torch.mean(m.running_var)))
            nas_score_list.append(float(torch.log(nas_score) + log_bn_scaling_factor))
    return float(np.mean(nas_score_list))


# ---- ZiCo (SLDGroup): ZeroShotProxy/compute_zico.py ----

def getgrad(model, grad_dict, step_iter=0):
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            g = mod.weight.grad.data.cpu().reshape(-1).numpy().copy()
            if step_iter == 0:
                grad_dict[name] = [g]
            else:
                grad_dict[name].append(g)
    return grad_dict


def caculate_zico(grad_dict):
    for name in grad_dict:
        grad_dict[name] = np.array(grad_dict[name])
    nsr_mean_sum_abs = 0
    for name in grad_dict:
        nsr_std = np.std(grad_dict[name], axis=0)
        nonzero_idx = np.nonzero(nsr_std)[0]
        nsr_mean_abs = np.mean(np.abs(grad_dict[name]), axis=0)
        tmpsum = np.sum(nsr_mean_abs[nonzero_idx] / nsr_std[nonzero_idx])
        if tmpsum != 0:
            nsr_mean_sum_abs += np.log(tmpsum)
    return nsr_mean_sum_abs


def zico_reference(network, batches) -> float:
    """getzico: gradients of successive batches accumulate (no zero_grad between them)."""
    network = copy.deepcopy(network)
    grad_dict = {}
    network.train()
    lossfunc = nn.CrossEntropyLoss()
    for i, (data, label) in enumerate(batches):
        lossfunc(network(data), label).backward()
        grad_dict = getgrad(network, grad_dict, i)
    return float(caculate_zico(grad_dict))


def reference_values(model: fx.GraphModule, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"synflow": synflow_reference(model, x), "synflow_bn": synflow_reference(model, x, bn=True),
            "snip": snip_reference(model, x, y), "grad_norm": grad_norm_reference(model, x, y),
            "naswot": naswot_reference(model, x, y), "zen": zen_reference(model, x.shape),
            "zen_repeat3": zen_reference(model, x.shape, repeat=3),
            "zico": zico_reference(model, list(zip(x.chunk(2), y.chunk(2))))}


def main() -> None:
    torch.set_num_threads(1)
    x, y = batch()
    out = {"about": "Reference values of the zero-cost proxies (README.md: sources and tolerances); "
                    "written by make_fixtures.py", "torch": torch.__version__, "numpy": np.__version__,
           "batch": {**BATCH, "x_sum": float(x.double().sum())}, "networks": {}}
    for name, d in NETWORKS.items():
        model = network(name)
        param_sum = float(sum(t.double().sum() for t in model.state_dict().values()))
        values = reference_values(model, x, y)
        out["networks"][name] = {**d, "param_sum": param_sum, "values": values}
        print(name, json.dumps(values), file=sys.stderr)
    (HERE / "fixtures.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
