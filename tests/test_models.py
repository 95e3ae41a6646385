"""Model registry and self-describing checkpoints (weights_only loading, safety checks)."""

import argparse

import pytest
import torch

from core.errors import UserError
from core.models import build_model, input_spec, load_model, read_checkpoint, save_checkpoint


@pytest.mark.parametrize(("arch", "kwargs"), [("tiny_cnn", {"width": 4}), ("resnet_cifar", {"depth": 8, "width": 4})])
def test_registry_models_give_logits(arch, kwargs):
    model = build_model(arch, 3, 7, kwargs)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_checkpoint_roundtrip_restores_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 1, 10, {"width": 4}).eval()
    spec = input_spec(8, 8, 1, [0.3], [0.4])
    sha = save_checkpoint(tmp_path / "m.pt", model, arch="tiny_cnn", arch_kwargs={"width": 4},
                          num_classes=10, input=spec)
    assert len(sha) == 64
    loaded, payload = load_model(tmp_path / "m.pt", outputs=10)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    assert payload["input"] == spec


def test_wrong_task_and_class_count_are_user_errors(tmp_path):
    model = build_model("tiny_cnn", 1, 10, {"width": 4})
    save_checkpoint(tmp_path / "r.pt", model, arch="tiny_cnn", arch_kwargs={"width": 4}, num_classes=10,
                    input=input_spec(8, 8, 1, [0.0], [1.0]), task="regress", head={"out_dim": 9, "logvar_dim": 1})
    with pytest.raises(UserError, match="task is 'regress'"):
        load_model(tmp_path / "r.pt")
    save_checkpoint(tmp_path / "c.pt", model, arch="tiny_cnn", arch_kwargs={"width": 4}, num_classes=10,
                    input=input_spec(8, 8, 1, [0.0], [1.0]))
    with pytest.raises(UserError, match="10 classes, the data has 100"):
        load_model(tmp_path / "c.pt", outputs=100)


def test_checkpoint_cannot_choose_code_the_config_did_not_name(tmp_path):
    model = build_model("tiny_cnn", 1, 10, {"width": 4})
    save_checkpoint(tmp_path / "evil.pt", model, arch="os:system", arch_kwargs={}, num_classes=10,
                    input=input_spec(8, 8, 1, [0.0], [1.0]))
    with pytest.raises(UserError, match="must also be named in the config"):
        load_model(tmp_path / "evil.pt")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format": "transferset-checkpoint/1", "obj": argparse.Namespace(x=1)}, tmp_path / "p.pt")
    with pytest.raises(UserError, match="cannot be loaded safely"):
        read_checkpoint(tmp_path / "p.pt")


def test_stochastic_depth_survival_decays_linearly_and_eval_scales_by_it():
    import torch

    from core.models import CifarResNet, full_network, stochastic_blocks

    model = CifarResNet(1, 10, depth=14, width=4, survival=0.5)  # 6 blocks
    blocks = stochastic_blocks(model)
    assert [b.survival for b in blocks] == pytest.approx([1 - i / 6 * 0.5 for i in range(1, 7)])
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    block = blocks[0]
    h = torch.randn(2, 4, 8, 8)
    branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(h)))))
    torch.testing.assert_close(block(h), torch.relu(block.survival * branch + h))  # eq 4
    model.train()
    torch.manual_seed(0)
    sampled = [model(x) for _ in range(6)]
    assert any(not torch.equal(sampled[0], s) for s in sampled[1:])  # different sub-networks
    model.eval()
    with full_network(model):
        torch.testing.assert_close(model(x), model(x))
    model.train()
    with full_network(model), torch.no_grad():
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        assert torch.allclose(first, model(x), atol=1e-5)  # the full network draws no blocks


def test_checkpoints_load_from_fsspec_urls(tmp_path):
    """A cluster's workers read teachers from shared storage: the same bytes through a URL give
    the same model (memory:// stands in for s3:// here), and a missing URL is a one-line error."""
    import fsspec

    model = build_model("tiny_cnn", 1, 10, {"width": 4}).eval()
    local = tmp_path / "model.pt"
    save_checkpoint(local, model, arch="tiny_cnn", arch_kwargs={"width": 4}, num_classes=10,
                    input=input_spec(8, 8, 1, [0.5], [0.25]))
    url = "memory://transferset-test/teachers/model.pt"
    with fsspec.open(url, "wb") as handle:
        handle.write(local.read_bytes())
    from_url, payload = load_model(url, outputs=10)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(from_url(x), model(x)) and payload["arch"] == "tiny_cnn"
    with pytest.raises(UserError, match="memory://transferset-test/none.pt: file not found"):
        read_checkpoint("memory://transferset-test/none.pt")
