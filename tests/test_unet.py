"""Norm factory and the ADM UNet: shapes, NsLN without scale, parameter counts, the command."""


import pytest
import torch

from lct.config import NetworkConfig
from lct.method.nn.norms import NORMS, NonScalingLayerNorm, make_norm, norm_scale_parameters, num_groups
from lct.method.nn.params import count_parameters
from lct.method.nn.params import main as params_main
from lct.method.nn.unet import UNET_SIZES, build_unet, unet_kwargs


@pytest.mark.parametrize("name", sorted(NORMS))
def test_norms_shape_and_normalization(name):
    torch.manual_seed(0)
    x = torch.randn(3, 64, 4, 4) * 3 + 2
    norm = make_norm(name, 64, 4)
    y = norm(x)
    assert y.shape == x.shape
    if name != "rms":  # at init every centering norm gives zero mean over its groups
        assert abs(float(y.detach().mean())) < 1e-4


def test_nsln_is_eq12_with_no_scale():
    norm = make_norm("nsln", 8, 4)
    assert isinstance(norm, NonScalingLayerNorm)
    names = dict(norm.named_parameters())
    assert list(names) == ["bias"] and names["bias"].shape == (8, 4, 4)
    with torch.no_grad():
        norm.bias.normal_()
    x = torch.randn(2, 8, 4, 4)
    flat = x.flatten(1)
    ref = ((flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + 1e-5)).view_as(x) + norm.bias
    torch.testing.assert_close(norm(x), ref)  # eq. 12, gamma = 1
    # Scaling the input does not change the output: the norm cannot rescale features.
    torch.testing.assert_close(norm(5 * x), norm(x), atol=1e-4, rtol=1e-4)


def test_group_counts():
    assert num_groups(128) == 32 and num_groups(16) == 4 and num_groups(3) == 1 and num_groups(48) == 12


def test_tiny_unet_forward_backward_and_zero_init():
    cfg = NetworkConfig(size="tiny", norm="nsln")
    net = build_unet(cfg, 8, 4)
    x = torch.randn(2, 4, 8, 8)
    y = net(x, torch.tensor([0.0, 100.0]))
    assert y.shape == x.shape and torch.count_nonzero(y) == 0  # output conv starts at zero
    with torch.no_grad():
        net.out_conv.weight.normal_()
    net(x, torch.tensor([0.0, 100.0])).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert norm_scale_parameters(net) == 0
    assert net.map_layer0.out_features == 4 * unet_kwargs(cfg)["model_channels"]  # embedding width 4 x channels


def test_overrides_and_pixel_input():
    cfg = NetworkConfig(size="tiny", model_channels=8, channel_mult=[1, 2], attn_resolutions=[16], channels_per_head=8)
    net = build_unet(cfg, 32, 1)
    assert net(torch.randn(2, 1, 32, 32), torch.zeros(2)).shape == (2, 1, 32, 32)
    heads = [getattr(b, "num_heads", 0) for b in net.enc]
    assert heads == [0, 0, 0, 2]  # stem conv, block at 32, down block, block at 16 with attention (16 ch / 8)
    with pytest.raises(ValueError, match="network.size"):
        build_unet(NetworkConfig(size="huge"), 8, 4)
    with pytest.raises(ValueError, match="divisible"):
        build_unet(NetworkConfig(size="tiny"), 6, 4)


def test_param_counts_per_norm_tiny():
    counts = {}
    for norm in NORMS:
        net = build_unet(NetworkConfig(size="tiny", norm=norm), 8, 4)
        counts[norm] = (count_parameters(net), norm_scale_parameters(net))
    assert counts["nsln"][1] == counts["nsgn"][1] == counts["nsin"][1] == 0
    assert counts["group"][1] > 0 and counts["layer"][1] > 0
    # NsLN = LayerNorm minus its scale; NsGN = GroupNorm minus its scale.
    assert counts["layer"][0] - counts["nsln"][0] == counts["layer"][1]
    assert counts["group"][0] - counts["nsgn"][0] == counts["group"][1]


# Trainable parameters of the paper size on 32x32x4, measured from the authors' code (EDM
# DhariwalUNet with resample_proj off; docs/METHOD.md section 4). IN has a per-channel affine like GN;
# NsGN / NsIN drop GN's per-channel scale.
PAPER_COUNTS = {
    "group": 151_325_956,
    "instance": 151_325_956,
    "layer": 165_468_676,
    "rms": 158_355_972,
    "nsln": 158_355_972,
}


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_paper_size_counts_match_the_authors_network(norm):
    with torch.device("meta"):
        net = build_unet(NetworkConfig(size="paper", norm=norm), 32, 4)
    n, scales = count_parameters(net), norm_scale_parameters(net)
    if norm in PAPER_COUNTS:
        assert n == PAPER_COUNTS[norm], (norm, n)
    else:  # nsgn, nsin: GroupNorm's count minus its scales
        assert n == PAPER_COUNTS["group"] - norm_scale_parameters(build_unet(NetworkConfig(size="paper"), 32, 4)), n
    assert (scales == 0) == norm.startswith("ns"), (norm, scales)  # the non-scaling norms train no scale
    assert UNET_SIZES["paper"]["channel_mult"] == [1, 2, 3, 4]


def test_up_down_blocks_have_no_skip_projection():
    """EDM resample_proj=False: a resampling block with equal channels resamples its skip path only."""
    net = build_unet(NetworkConfig(size="tiny"), 8, 4)
    resamplers = [b for b in list(net.enc) + list(net.dec) if getattr(b, "up", False) or getattr(b, "down", False)]
    assert resamplers and all(b.skip is None for b in resamplers)
    # The skip-consuming decoder blocks are listed on the UNet, not marked on the modules.
    assert len(net.dec_takes_skip) == len(net.dec)
    assert not any(hasattr(b, "is_skip_consumer") for b in net.dec)


def test_unet_params_command(capsys):
    assert params_main(["--size", "tiny", "--resolution", "8"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == set(NORMS)
    assert rows["nsln"][1] == "0" and rows["group"][1] != "0"


def test_rms_norm_epsilon_is_the_dtypes_machine_epsilon():
    """Table 2d's RMS cell: torch.nn.RMSNorm(eps=None), as the authors' code builds it (no eps argument)."""
    import torch

    from lct.method.nn.norms import make_norm

    m = make_norm("rms", 8, 4)
    assert m.eps is None
    x = torch.full((1, 8, 4, 4), 1e-2)
    y = m(x)  # eps 1e-5 would give 1e-2 / sqrt(1e-4 + 1e-5) = 0.953; machine eps (1.2e-7) gives 0.9994
    assert torch.allclose(y, torch.ones_like(y), atol=1e-3)
