"""Generator architectures: shapes, parameter names, hparams round trip, input contract."""

from __future__ import annotations

import json

import pytest
import torch

from texup.archs import ARCHITECTURES, RRDBNet, SRVGGNetCompact, build

TINY_RRDB = dict(num_feat=8, num_block=1, num_grow_ch=4)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_rrdbnet_output_shape_and_input_multiple(scale: int) -> None:
    net = RRDBNet(scale=scale, **TINY_RRDB).eval()
    m = net.input_multiple
    assert m == {1: 4, 2: 2, 4: 1, 8: 1}[scale]
    # An odd size, padded up to the multiple the way callers must.
    h, w = 37, 53
    ph, pw = -(-h // m) * m, -(-w // m) * m
    x = torch.rand(2, 3, ph, pw)
    with torch.inference_mode():
        y = net(x)
    assert y.shape == (2, 3, ph * scale, pw * scale)
    assert y.dtype == torch.float32


@pytest.mark.parametrize("scale", [1, 2, 4, 8, 16])
def test_rrdbnet_streamed_head_matches_the_whole_map(scale: int) -> None:
    torch.manual_seed(scale)
    net = RRDBNet(scale=scale, num_feat=8, num_block=1, num_grow_ch=4).eval()
    m = net.input_multiple
    # Odd trunk sizes, so the last strip is short; several strip heights, 1 row included.
    x = torch.rand(1, 3, 11 * m, 7 * m) * 2 - 0.5
    with torch.no_grad():
        whole = net(x)
        for rows in (1, 2, 3, 5, 10, 11, 40):
            net.stream_rows = rows
            streamed = net(x)
            assert streamed.shape == whole.shape
            torch.testing.assert_close(streamed, whole, atol=2e-6, rtol=0)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        net.stream_rows = 3
        torch.testing.assert_close(net.to(memory_format=torch.channels_last)(x_cl), whole, atol=2e-6, rtol=0)


@pytest.mark.parametrize("batch", [1, 2])
def test_rrdbnet_inference_without_concatenation_is_bit_identical(batch: int) -> None:
    torch.manual_seed(batch)
    net = RRDBNet(num_feat=16, num_block=2, num_grow_ch=8).eval()
    x = torch.rand(batch, 3, 13, 21)
    trained_path = net(x)  # autograd on: the concatenating forward
    assert trained_path.requires_grad
    with torch.inference_mode():
        inference_path = net(x)  # no autograd, NCHW: growth outputs written into one buffer
    assert torch.equal(trained_path.detach(), inference_path)
    trained_path.square().mean().backward()
    assert net.body[0].rdb1.conv1.weight.grad is not None


def test_rrdbnet_streaming_is_off_by_default_and_for_training() -> None:
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)
    assert net.stream_rows is None
    net.stream_rows = 2
    x = torch.rand(2, 3, 9, 6, requires_grad=True)
    net(x).square().mean().backward()  # strips are differentiable too
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_rrdbnet_activation_estimate_shrinks_with_streaming() -> None:
    net = RRDBNet()  # x4plus shape
    whole = net.activation_bytes(288, 288)
    net.stream_rows = 16
    streamed = net.activation_bytes(288, 288)
    # Three 64-channel 1152x1152 float32 head tensors (340 MB each) no longer exist at once.
    assert whole - streamed > 900e6
    assert 200e6 < streamed < 400e6
    assert net.activation_bytes(288, 288, 2) * 2 == streamed


@pytest.mark.parametrize("scale", [1, 2])
def test_rrdbnet_rejects_unpadded_input(scale: int) -> None:
    net = RRDBNet(scale=scale, **TINY_RRDB)
    with pytest.raises(ValueError, match="multiples of"):
        net(torch.rand(1, 3, 37, 53))


def test_rrdbnet_gray_and_channel_check() -> None:
    net = RRDBNet(num_in_ch=1, num_out_ch=1, scale=2, **TINY_RRDB)
    assert net.conv_first.in_channels == 4
    assert net(torch.rand(1, 1, 6, 10)).shape == (1, 1, 12, 20)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.rand(1, 3, 6, 10))


def test_rrdbnet_parameter_names_are_basicsr() -> None:
    net = RRDBNet(scale=4, num_feat=8, num_block=2, num_grow_ch=4)
    names = set(net.state_dict())
    expected = {
        "conv_first.weight",
        "conv_body.weight",
        "conv_up1.weight",
        "conv_up2.weight",
        "conv_hr.weight",
        "conv_last.weight",
    }
    expected |= {f"body.{i}.rdb{k}.conv{j}.weight" for i in range(2) for k in (1, 2, 3) for j in range(1, 6)}
    assert expected | {n.replace(".weight", ".bias") for n in expected} == names
    assert net.body[1].rdb3.conv5.weight.shape == (8, 8 + 4 * 4, 3, 3)
    assert "conv_up3.weight" in RRDBNet(scale=8, **TINY_RRDB).state_dict()


def test_rrdbnet_conv_first_channels_for_unshuffle() -> None:
    assert RRDBNet(scale=2, **TINY_RRDB).conv_first.in_channels == 12
    assert RRDBNet(scale=1, **TINY_RRDB).conv_first.in_channels == 48


@pytest.mark.parametrize("bad", [dict(scale=3), dict(num_block=0), dict(num_feat=2.5)])
def test_rrdbnet_rejects_bad_hparams(bad: dict) -> None:
    with pytest.raises(ValueError):
        RRDBNet(**{**TINY_RRDB, **bad})


@pytest.mark.parametrize("upscale", [1, 2, 3, 4])
def test_compact_shape_any_size(upscale: int) -> None:
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=upscale).eval()
    assert net.input_multiple == 1 and net.scale == upscale
    with torch.inference_mode():
        y = net(torch.rand(1, 3, 37, 53))
    assert y.shape == (1, 3, 37 * upscale, 53 * upscale)


def test_compact_layout_and_activation() -> None:
    net = SRVGGNetCompact(num_feat=8, num_conv=3, upscale=4, act_type="prelu")
    sd = net.state_dict()
    assert sd["body.0.weight"].shape == (8, 3, 3, 3)
    assert sd["body.1.weight"].shape == (8,)
    last = 2 + 2 * 3
    assert sd[f"body.{last}.weight"].shape == (3 * 16, 8, 3, 3)
    relu = SRVGGNetCompact(num_feat=8, num_conv=3, act_type="relu")
    assert "body.1.weight" not in relu.state_dict()


def test_compact_zero_body_is_nearest_upsampling() -> None:
    """With the last conv zeroed the network must reduce to its skip path: nearest upsampling."""
    net = SRVGGNetCompact(num_feat=8, num_conv=1, upscale=2)
    with torch.no_grad():
        net.body[-1].weight.zero_()
        net.body[-1].bias.zero_()
    x = torch.rand(1, 3, 5, 7)
    y = net(x)
    assert torch.equal(y, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def test_compact_rejects_bad_hparams() -> None:
    with pytest.raises(ValueError, match="act_type"):
        SRVGGNetCompact(act_type="gelu")
    with pytest.raises(ValueError, match="must equal"):
        SRVGGNetCompact(num_in_ch=3, num_out_ch=1)


@pytest.mark.parametrize(
    "arch,hparams",
    [
        ("RRDBNet", dict(num_in_ch=1, num_out_ch=1, scale=2, num_feat=8, num_block=2, num_grow_ch=4)),
        ("SRVGGNetCompact", dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=3, act_type="relu")),
    ],
)
def test_hparams_round_trip(arch: str, hparams: dict) -> None:
    net = build(arch, hparams)
    assert isinstance(net, ARCHITECTURES[arch])
    assert net.hparams == hparams
    again = build(arch, json.loads(json.dumps(net.hparams)))
    again.load_state_dict(net.state_dict(), strict=True)
    x = torch.rand(1, hparams["num_in_ch"], 8, 12)
    assert torch.equal(again(x), net(x))


def test_build_unknown_architecture() -> None:
    with pytest.raises(KeyError, match="RRDBNet"):
        build("SwinIR", {})
