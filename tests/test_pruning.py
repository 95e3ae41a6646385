"""The pruning methods (student/pruning/) check their values: L1 keeps exactly the largest-L1
filters per stage ratio, slimming removes exactly the channels under the global threshold,
magnitude zeroes exactly the requested fraction of each convolution and leaves the final layer
dense; a structurally pruned model is smaller and its checkpoint reloads to bit-identical outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from core.config import ModelConfig, SourceConfig, TrainConfig
from core.errors import UserError
from core.models import CifarResNet, TinyCNN, input_spec, load_model, save_checkpoint
from core.models.nets import LeNet, PreActResNet
from core.sources import load_source
from student.pruning.l1 import filter_norms, kept, l1_prune
from student.pruning.magnitude import magnitude_prune
from student.pruning.measure import compare, size
from student.pruning.shaping import Shaping
from student.pruning.slimming import add_l1_subgradient, slim
from student.train import TrainRequest, train_model

EXAMPLE = torch.zeros(1, 3, 16, 16)


def resnet(seed: int = 0) -> CifarResNet:
    """A depth-8 CIFAR ResNet (one block per stage, widths 8/16/32) with random batch-norm
    statistics, so every channel matters to the output."""
    torch.manual_seed(seed)
    model = CifarResNet(3, 10, depth=8, width=8)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.1, 1.0)
            module.bias.data.normal_(0, 0.1)
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_l1_keeps_exactly_the_largest_l1_filters_at_each_stage_ratio():
    model = resnet()
    ratios = [0.5, 0.25, 0.75]
    before = copy.deepcopy(model)
    record = l1_prune(model, ratios, EXAMPLE)
    assert record["widths_before"] == {"layers.0.conv1": 8, "layers.1.conv1": 16, "layers.2.conv1": 32}
    assert record["widths"] == {"layers.0.conv1": 4, "layers.1.conv1": 12, "layers.2.conv1": 8}
    for stage, ratio in enumerate(ratios):
        old, new = before.layers[stage], model.layers[stage]
        norms = filter_norms(old.conv1)
        keep = sorted(torch.topk(norms, kept(old.conv1.out_channels, ratio)).indices.tolist())
        assert torch.equal(new.conv1.weight, old.conv1.weight[keep])  # the largest filters, in order
        assert torch.equal(new.bn1.weight, old.bn1.weight[keep])  # ... with their batch norm
        assert torch.equal(new.bn1.running_var, old.bn1.running_var[keep])
        assert torch.equal(new.conv2.weight, old.conv2.weight[:, keep])  # and the consumer's inputs
        assert new.conv2.out_channels == old.conv2.out_channels  # the residual sum is left alone
        dropped = sorted(set(range(old.conv1.out_channels)) - set(keep))
        assert norms[dropped].max() <= norms[keep].min()
    assert torch.equal(model.stem[0].weight, before.stem[0].weight)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_l1_takes_one_ratio_for_every_stage_and_refuses_a_wrong_count():
    model = resnet()
    assert l1_prune(model, [0.5], EXAMPLE)["widths"] == {"layers.0.conv1": 4, "layers.1.conv1": 8,
                                                          "layers.2.conv1": 16}
    with pytest.raises(UserError, match="2 ratios for a model with 3 stages"):
        l1_prune(resnet(), [0.5, 0.5], EXAMPLE)


def test_slimming_removes_exactly_the_channels_under_the_global_threshold():
    model = resnet(1)
    before = copy.deepcopy(model)
    scales = torch.cat([before.layers[s].bn1.weight.detach().abs() for s in range(3)])
    record = slim(model, 0.4, EXAMPLE)
    threshold = record["threshold"]
    assert threshold == float(torch.sort(scales).values[round(0.4 * len(scales))])
    assert int((scales < threshold).sum()) == round(0.4 * len(scales))  # distinct scales: exactly the fraction
    for stage in range(3):
        old, new = before.layers[stage].bn1.weight.detach(), model.layers[stage].bn1.weight.detach()
        keep = (old.abs() >= threshold).nonzero().flatten()
        assert torch.equal(new, old[keep])
        assert model.layers[stage].conv1.out_channels == len(keep)
        assert torch.equal(model.layers[stage].conv2.weight, before.layers[stage].conv2.weight[:, keep])
    assert sum(record["widths"].values()) == len(scales) - round(0.4 * len(scales))


def test_slimming_keeps_a_layers_largest_channel_and_needs_batch_norm():
    model = resnet()
    model.layers[0].bn1.weight.data.fill_(1e-4)
    model.layers[0].bn1.weight.data[3] = 2e-4
    assert slim(model, 0.3, EXAMPLE)["widths"]["layers.0.conv1"] == 1
    assert torch.equal(model.layers[0].bn1.weight.detach(), torch.tensor([2e-4]))
    with pytest.raises(UserError, match="no batch norm"):
        slim(LeNet(1, 10, conv1=4, conv2=6, hidden=8, grid=(2, 2)), 0.5, torch.zeros(1, 1, 16, 16))


def test_the_slimming_penalty_adds_lambda_times_the_sign_of_each_scale():
    norm = nn.BatchNorm2d(3)
    norm.weight.data = torch.tensor([0.5, -0.2, 0.0])
    norm.weight.grad = torch.tensor([1.0, 1.0, 1.0])
    add_l1_subgradient([norm], 0.1)
    assert torch.allclose(norm.weight.grad, torch.tensor([1.1, 0.9, 1.0]))


def test_magnitude_zeroes_exactly_the_fraction_of_each_conv_and_keeps_the_final_layer_dense():
    model = resnet()
    before = copy.deepcopy(model)
    record = magnitude_prune(model, 0.6)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 9  # stem, 2 per block, 2 shortcut convolutions
    olds = dict(before.named_modules())
    for name, conv in convs:
        old = olds[name].weight.detach().abs().flatten()
        zeros = conv.weight.detach().flatten() == 0
        assert int(zeros.sum()) == round(0.6 * old.numel())
        assert old[zeros].max() <= old[~zeros].min()  # the smallest magnitudes went
        assert torch.equal(conv.weight.detach().flatten()[~zeros], olds[name].weight.detach().flatten()[~zeros])
        assert not hasattr(conv, "weight_orig") and not hasattr(conv, "weight_mask")  # masks made permanent
    assert torch.equal(model.head.weight, before.head.weight) and bool((model.head.weight != 0).all())
    total = sum(m.weight.numel() for _, m in convs)
    assert record["conv_zeros"] == sum(round(0.6 * m.weight.numel()) for _, m in convs)
    assert record["conv_sparsity"] == pytest.approx(record["conv_zeros"] / total)
    assert record["structured"] is False


@pytest.mark.parametrize("method", ["l1", "slimming"])
def test_a_structurally_pruned_model_is_smaller_and_reloads_bit_identically(method, tmp_path):
    model = resnet(2)
    unpruned = copy.deepcopy(model)
    record = l1_prune(model, [0.5, 0.5, 0.5], EXAMPLE) if method == "l1" else slim(model, 0.5, EXAMPLE)
    small, large = size(model, EXAMPLE), size(unpruned, EXAMPLE)
    assert small["parameters"] < large["parameters"] and small["macs"] < large["macs"]
    assert large["parameters"] == sum(p.numel() for p in unpruned.parameters())
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, arch="resnet_cifar", arch_kwargs={"depth": 8, "width": 8}, num_classes=10,
                    input=input_spec(16, 16, 3, [0.5] * 3, [0.25] * 3), pruned=record)
    payload = torch.load(path, weights_only=True)
    assert payload["pruned"]["widths"] == record["widths"]
    loaded, _ = load_model(path, outputs=10)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert size(loaded, EXAMPLE) == small
    dense = tmp_path / "dense.pt"
    save_checkpoint(dense, unpruned, arch="resnet_cifar", arch_kwargs={"depth": 8, "width": 8}, num_classes=10,
                    input=input_spec(16, 16, 3, [0.5] * 3, [0.25] * 3))
    assert path.stat().st_size < 0.8 * dense.stat().st_size


def test_a_damaged_width_record_is_refused(tmp_path):
    model = resnet()
    record = l1_prune(model, [0.5], EXAMPLE)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, arch="resnet_cifar", arch_kwargs={"depth": 8, "width": 8}, num_classes=10,
                    input=input_spec(16, 16, 3, [0.5] * 3, [0.25] * 3),
                    pruned={**record, "widths": {**record["widths"], "layers.0.conv1": 5}})
    with pytest.raises(UserError, match="should have 5 output channels"):
        load_model(path, outputs=10)


def test_preact_and_tiny_models_prune_too():
    preact = PreActResNet(3, 10, width=4).eval()
    assert l1_prune(preact, [0.5], EXAMPLE)["widths"] == {f"layers.{i}.conv1": w // 2
                                                          for i, w in enumerate((4, 8, 16, 32))}
    tiny = TinyCNN(1, 10, width=4).eval()
    assert l1_prune(tiny, [0.5, 0.5], torch.zeros(1, 1, 8, 8))["widths"] == {"features.0": 2, "features.3": 4}


def test_measured_latency_sits_beside_the_unpruned_model():
    model = resnet()
    unpruned = copy.deepcopy(model)
    l1_prune(model, [0.75], EXAMPLE)
    measured = compare(unpruned, model, EXAMPLE, batches=(1, 8))
    for side in ("unpruned", "pruned"):
        assert measured[side]["latency_b1_s"] > 0 and measured[side]["latency_b8_s"] > 0
    assert measured["pruned"]["macs"] < measured["unpruned"]["macs"]


def test_fine_tuning_a_pruned_checkpoint_keeps_its_widths_and_zeros(tmp_path):
    """The trainer starts from a pruned checkpoint (shaping.init), keeps a magnitude model's zeros
    through momentum and weight decay, and saves the record again."""
    source_cfg = SourceConfig(kind="digits")
    train, test = load_source(source_cfg, "train"), load_source(source_cfg, "test")
    model_cfg = ModelConfig(arch="tiny_cnn", arch_kwargs={"width": 4})
    cfg = TrainConfig(steps=6, batch_size=32, num_workers=0, lr=0.05)
    spec = input_spec(8, 8, 1, [0.5], [0.25])
    for method in ("l1", "magnitude"):
        torch.manual_seed(0)
        model = TinyCNN(1, 10, width=4).eval()
        record = l1_prune(model, [0.5, 0.5], torch.zeros(1, 1, 8, 8)) if method == "l1" else magnitude_prune(model, 0.5)
        start = tmp_path / f"{method}.pt"
        save_checkpoint(start, model, arch="tiny_cnn", arch_kwargs={"width": 4}, num_classes=10, input=spec,
                        pruned=record)
        out = tmp_path / method
        train_model(TrainRequest(name=method, model=model_cfg, train=cfg, out_dir=out, seed=0,
                                 shaping=Shaping(init=str(start), keep_zeros=method == "magnitude")), train, test)
        tuned, payload = load_model(out / "model.pt", outputs=10)
        assert payload["pruned"]["method"] == method
        if method == "l1":
            assert tuned.features[0].out_channels == 2 and tuned.features[3].out_channels == 4
        else:
            for old, new in ((model.features[0], tuned.features[0]), (model.features[3], tuned.features[3])):
                zeros = old.weight == 0
                assert bool((new.weight[zeros] == 0).all()) and not torch.equal(new.weight, old.weight)
            assert payload["pruned"]["conv_zeros"] >= record["conv_zeros"]
