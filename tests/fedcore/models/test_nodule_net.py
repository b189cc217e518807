"""Tests of the 3D CNN + Transformer nodule model and the patch container."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fedcore.models.nodule_net import NoduleNet, PatchSet, build_nodule_net


def test_shapes_tokens_and_params() -> None:
    torch.manual_seed(0)
    model = NoduleNet()
    logits = model(torch.rand(3, 1, 32, 32, 32))
    assert logits.shape == (3,)
    assert logits.dtype == torch.float32
    assert model.grid == 4 and model.num_tokens == 64  # 32 / 2**3 = 4 cells a side, 4**3 tokens
    assert model.tokens(torch.rand(2, 1, 32, 32, 32)).shape == (2, 65, 32)  # CLS + 64 cells
    # stem:  1*8*27+8 = 224, GN 16;  8*16*27+16 = 3472, GN 32;  16*32*27+32 = 13856, GN 64
    #        -> 17664
    # proj 32*32+32 = 1056; cls 32; positions 65*32 = 2080                 -> 3168
    # per layer: in_proj 3*32*32+96 = 3168, out_proj 1056, ff 32*128+128 = 4224 and
    #        128*32+32 = 4128, two LayerNorms 128 -> 12704; x 2 layers      -> 25408
    # final LayerNorm 64; head Linear(2*32, 1) = 65                         -> 129
    # total 17664 + 3168 + 25408 + 129 = 46369
    assert model.num_parameters() == 46369
    assert 30_000 <= model.num_parameters() <= 150_000
    small = NoduleNet(in_size=16, channels=(4, 8), dim=16, heads=2, layers=1)
    assert small.num_tokens == 64  # 16 / 2**2 = 4
    assert small(torch.rand(2, 1, 16, 16, 16)).shape == (2,)


def test_repr() -> None:
    model = NoduleNet()
    assert repr(model) == (
        "NoduleNet(in_size=32, channels=(8, 16, 32), dim=32, heads=4, layers=2, "
        "dropout=0.0, tokens=64, params=46369)"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_size": 30}, "found in_size=30"),  # 30 is not a multiple of 2**3
        ({"in_size": 4}, "found in_size=4"),  # smaller than 2**3
        ({"in_size": 32, "channels": (8, 16, 32, 64, 64, 64)}, "2 \\*\\* len\\(channels\\) = 64"),
        ({"channels": ()}, "found \\(\\)"),
        ({"channels": (8, 0)}, "found \\(8, 0\\)"),
        ({"heads": 3}, "dim=32, heads=3"),
        ({"dim": 0}, "dim=0"),
        ({"layers": 0}, "layers=0"),
        ({"dropout": 1.0}, "found 1.0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NoduleNet(**kwargs)  # type: ignore[arg-type]


def test_wrong_input_shape_is_refused() -> None:
    model = NoduleNet()
    with pytest.raises(ValueError, match=r"\[B, 1, 32, 32, 32\]; found \[2, 1, 16, 16, 16\]"):
        model(torch.rand(2, 1, 16, 16, 16))
    with pytest.raises(ValueError, match=r"found \[32, 32, 32\]"):
        model(torch.rand(32, 32, 32))


def test_every_parameter_gets_a_gradient() -> None:
    # parameters without gradient would sit still in every federated round
    torch.manual_seed(0)
    model = NoduleNet(in_size=16, channels=(4, 8), dim=16, heads=2, layers=2)
    model(torch.rand(4, 1, 16, 16, 16)).sum().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


def test_init_is_seeded_and_encoder_layers_differ() -> None:
    torch.manual_seed(3)
    a = NoduleNet()
    torch.manual_seed(3)
    b = NoduleNet()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    layer0, layer1 = a.encoder.layers[0], a.encoder.layers[1]
    # nn.TransformerEncoder deep-copies one layer; reset_parameters gives each its own draw
    assert not torch.equal(layer0.linear1.weight, layer1.linear1.weight)
    assert not torch.equal(layer0.self_attn.in_proj_weight, layer1.self_attn.in_proj_weight)


def test_build_from_task_attributes_and_defaults() -> None:
    task = SimpleNamespace(patch_size=16, channels=[4, 8], dim=16, heads=2, layers=1, dropout=0.2)
    model = build_nodule_net(task)
    assert (model.in_size, model.channels, model.dim) == (16, (4, 8), 16)
    assert (model.heads, model.num_layers, model.dropout) == (2, 1, 0.2)
    default = build_nodule_net(SimpleNamespace(model="nodule-net", dim=None))
    assert repr(default) == repr(NoduleNet())
    with pytest.raises(ValueError, match="found in_size=20"):
        build_nodule_net(SimpleNamespace(patch_size=20))


def test_build_from_a_scenario_task() -> None:
    from fedcore.config import TaskSpec  # the task section of a nodule-net scenario

    task = TaskSpec.model_validate(
        {
            "model": "nodule-net",
            "layers": 3,  # the fraud GNN's setting: must not leak into the nodule model
            "imaging": {
                "patch_size": 16,
                "channels": [4, 8],
                "dim": 16,
                "heads": 2,
                "transformer_layers": 1,
                "dropout": 0.0,
            },
        }
    )
    model = build_nodule_net(task)
    assert (model.in_size, model.channels, model.num_layers) == (16, (4, 8), 1)
    assert (model.dim, model.heads, model.dropout) == (16, 2, 0.0)


def test_patchset_checks_and_counts() -> None:
    x = torch.zeros(3, 1, 8, 8, 8)
    y = torch.tensor([0, 1, 1])
    ps = PatchSet(x, y, ["s:0", "s:1", "s:2"])
    assert (len(ps), ps.num_pos, ps.patch_size) == (3, 2, 8)
    with pytest.raises(ValueError, match="float32"):
        PatchSet(x.double(), y, ["a", "b", "c"])
    with pytest.raises(ValueError, match="3 patches, 2 ids"):
        PatchSet(x, y, ["a", "b"])
    with pytest.raises(ValueError, match="found values \\[2\\]"):
        PatchSet(x, torch.tensor([0, 2, 1]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="int64"):
        PatchSet(x, y.int(), ["a", "b", "c"])
    with pytest.raises(ValueError, match="cubes"):
        PatchSet(torch.zeros(3, 1, 8, 8, 4), y, ["a", "b", "c"])
    empty = PatchSet(torch.zeros(0, 1, 8, 8, 8), torch.zeros(0, dtype=torch.int64), [])
    assert (len(empty), empty.num_pos) == (0, 0)
