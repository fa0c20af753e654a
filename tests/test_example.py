"""The VideoMAE-style example trains: its loss goes down within a few steps."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "videomae_pretrain_step.py"


def load_example():
    spec = importlib.util.spec_from_file_location("videomae_pretrain_step", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_loss_decreases():
    pytest.importorskip("timm")
    example = load_example()
    losses = example.main(steps=10, batch_size=8, verbose=False)
    assert len(losses) == 10 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0


def test_example_pieces_follow_the_recipe():
    pytest.importorskip("timm")
    example = load_example()
    video_model, projection, criterion = example.build()
    g = torch.Generator().manual_seed(0)
    clips = example.synthetic_clips(2, g)
    mask = example.tube_mask(2, video_model.encoder.grid_size, 0.75, generator=g)
    assert video_model.encoder.grid_size == (4, 4, 4) and mask.shape == (2, 64)
    # the same 12 of 16 spatial positions are masked in each of the 4 time slices
    per_slice = mask.reshape(2, 4, 16)
    assert (per_slice == per_slice[:, :1]).all() and (per_slice.sum(-1) == 12).all()
    pred = video_model(clips, mask)
    feats = projection(example.tube_pixels(clips, example.TUBE)[mask])
    assert pred.shape == (2, 48, 32) and feats.shape == (96, 32)
    loss = criterion(pred, feats.view_as(pred))
    assert torch.isfinite(loss)


# --- the reusable pieces in sigma.masking / sigma.models -------------------------------------

def test_tube_mask_matches_the_recipe():
    from sigma.masking import tube_mask
    mask = tube_mask(3, (8, 14, 14), 0.9, generator=torch.Generator().manual_seed(1))
    assert mask.dtype == torch.bool and mask.shape == (3, 1568)
    per_slice = mask.reshape(3, 8, 196)
    assert (per_slice.sum(-1) == 176).all() and (mask.sum(1) == 1408).all()
    assert (per_slice == per_slice[:, :1]).all()
    assert not (per_slice[0, 0] == per_slice[1, 0]).all()  # a fresh mask per sample


def test_patchify_order_matches_the_tube_embedding():
    pytest.importorskip("timm")
    from sigma.models import TubeEmbedding, patchify_tubes
    video = torch.randn(2, 3, 4, 32, 48)
    tubes = patchify_tubes(video, (2, 16, 16))  # (B, N, P, C)
    assert tubes.shape == (2, 2 * 2 * 3, 512, 3)
    # a Conv3d tube embedding whose output channel j reads voxel j of channel 0 (p = (t, y, x) row-major)
    embed = TubeEmbedding(3, 512, (2, 16, 16))
    with torch.no_grad():
        weight = torch.zeros(512, 3, 2, 16, 16)
        weight[:, 0].view(512, 512)[torch.arange(512), torch.arange(512)] = 1.0
        embed.proj.weight.copy_(weight)
        embed.proj.bias.zero_()
    torch.testing.assert_close(embed(video), tubes[..., 0])


def test_normalize_tubes_per_tube_and_channel_channel_last():
    from sigma.models import normalize_tubes
    tubes = torch.randn(2, 5, 512, 3) * torch.tensor([1.0, 4.0, 0.1]) + torch.tensor([3.0, -2.0, 0.5])
    flat = normalize_tubes(tubes)
    assert flat.shape == (2, 5, 1536)
    per_channel = flat.reshape(2, 5, 512, 3)  # channel-last flattening: index = p·C + c
    mean = tubes.mean(dim=2, keepdim=True)
    std = tubes.std(dim=2, unbiased=True, keepdim=True)
    torch.testing.assert_close(per_channel, (tubes - mean) / (std + 1e-6))
    torch.testing.assert_close(per_channel.mean(dim=2), torch.zeros(2, 5, 3), atol=1e-5, rtol=0)
    # a constant tube stays finite (the +1e-6 guards the division)
    assert torch.isfinite(normalize_tubes(torch.ones(1, 1, 512, 3))).all()


def test_projection_mlp_shape_and_layers():
    from sigma.models import TubeProjectionMLP
    mlp = TubeProjectionMLP()
    linears = [m for m in mlp.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1536, 1024), (1024, 1024), (1024, 512), (512, 256)]
    assert sum(isinstance(m, torch.nn.GELU) for m in mlp.net) == 3
    assert mlp(torch.randn(7, 1536)).shape == (7, 256)
