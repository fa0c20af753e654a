"""sigma.models: the VideoMAE-layout ViT on timm's blocks, configs, conventions and projections."""
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")

import sigma.models as sm  # noqa: E402
from sigma.masking import tube_mask  # noqa: E402

TINY = dict(num_frames=4, img_size=32, embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=24,
            decoder_num_heads=2)  # grid (2, 2, 2): 8 tokens; smaller than the tiny config for speed


def _mask(batch, grid, ratio=0.5, seed=0):
    return tube_mask(batch, grid, ratio, generator=torch.Generator().manual_seed(seed))


# --- position table ----------------------------------------------------------------------------

@pytest.mark.parametrize("n,dim", [(1568, 384), (1568, 768), (7, 6)])
def test_position_table_matches_a_float64_numpy_table(n, dim):
    pos = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000.0, 2 * (j // 2) / dim)
    want = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    got64 = sm.sincos_position_table(n, dim, dtype=torch.float64)[0].numpy()
    assert np.abs(got64 - want).max() < 1e-9
    got32 = sm.sincos_position_table(n, dim)[0]
    assert got32.dtype == torch.float32
    assert (got32 == torch.from_numpy(want).float()).float().mean() > 0.999  # the cast of the same float64 table


# --- sizes -------------------------------------------------------------------------------------

def _encoder_params(c, depth, tube=(2, 16, 16), chans=3):
    """VideoMAE encoder parameter count: Conv3d tube embedding, blocks with q/v biases, final norm."""
    block = 2 * c + (3 * c * c + 2 * c) + (c * c + c) + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c)
    return chans * math.prod(tube) * c + c + depth * block + 2 * c


@pytest.mark.parametrize("name,timm_name,c,depth", [("sigma_vit_small_patch16", "vit_small_patch16_224", 384, 12),
                                                    ("sigma_vit_base_patch16", "vit_base_patch16_224", 768, 12)])
def test_encoder_parameter_counts_equal_videomae(name, timm_name, c, depth):
    with torch.device("meta"):
        ours = sm.create_encoder(name)
        image_vit = timm.create_model(timm_name, num_classes=0)
    n = sum(p.numel() for p in ours.parameters())
    assert n == _encoder_params(c, depth)
    # independently: timm's image ViT minus its class token, learned position table and k biases,
    # plus the second frame of the Conv3d kernel
    n_image = sum(p.numel() for p in image_vit.parameters())
    assert n == n_image - c - 197 * c - depth * c + 3 * 16 * 16 * c
    assert ours.num_tokens == 1568 and ours.grid_size == (8, 14, 14) and ours.embed_dim == c


def test_named_configs_match_the_recipe():
    s, b = sm.get_config("sigma_vit_small_patch16"), sm.get_config("sigma_vit_base_patch16")
    assert (s.decoder_embed_dim, s.decoder_depth, b.decoder_embed_dim, b.decoder_depth) == (192, 4, 384, 4)
    assert s.norm_eps == 1e-6 and s.tube_size == (2, 16, 16) and s.num_frames == 16 and s.img_size == (224, 224)
    with torch.device("meta"):
        model = sm.create_model("sigma_vit_small_patch16")
    assert model.decoder.head.out_features == 256
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)


@pytest.mark.parametrize("overrides,grid", [(dict(num_frames=6, img_size=(48, 80), tubelet_size=3), (2, 3, 5)),
                                            (dict(num_frames=2, img_size=24, patch_size=8), (1, 3, 3))])
def test_odd_sizes(overrides, grid):
    model = sm.create_model("sigma_vit_tiny_patch16", out_dim=16, **overrides)
    enc = model.encoder
    assert enc.grid_size == grid and enc.num_tokens == math.prod(grid)
    t, (h, w) = model.config.num_frames, model.config.img_size
    video = torch.randn(2, 3, t, h, w)
    mask = _mask(2, grid, 0.5)
    n_mask = int(mask[0].sum())
    assert model(video, mask).shape == (2, n_mask, 16)
    assert enc(video, mask).shape == (2, enc.num_tokens - n_mask, enc.embed_dim)
    assert enc.forward_features(video).shape == (2, enc.num_tokens, enc.embed_dim)
    assert enc.forward_pooled(video).shape == (2, enc.embed_dim)


def test_indivisible_sizes_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        sm.create_model("sigma_vit_tiny_patch16", num_frames=5)
    with pytest.raises(ValueError, match="divisible"):
        sm.create_encoder("sigma_vit_tiny_patch16", img_size=(32, 40))
    with pytest.raises(TypeError, match="unknown model config keys"):
        sm.create_model("sigma_vit_tiny_patch16", embed=3)
    with pytest.raises(ValueError, match="unknown model name"):
        sm.create_model("vit_small_patch16_224")


# --- conventions -------------------------------------------------------------------------------

def test_layout_and_size_errors():
    model = sm.create_model("sigma_vit_tiny_patch16", **TINY)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = _mask(2, (2, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        model(video.transpose(1, 2).contiguous(), mask)
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.randn(2, 3, 4, 40, 40), mask)
    with pytest.raises(ValueError, match="num_frames=/img_size="):
        model(torch.randn(2, 3, 8, 32, 32), mask)
    with pytest.raises(TypeError, match="bool"):
        model(video, mask.long())
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        model(video, mask[:, :4])
    # 6 and 4 masked tubes: 10 in all, which a plain reshape to (2, 5, C) would silently accept
    uneven = torch.tensor([[1, 1, 1, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    with pytest.raises(ValueError, match="same number"):
        model(video, uneven)


def test_decoder_predicts_masked_tubes_in_token_order():
    """Row j of the output is the prediction for the j-th masked tube in (t, h, w) order."""
    torch.manual_seed(0)
    # decoder depth 0: a mask token's output depends on its own position only
    model = sm.create_model("sigma_vit_tiny_patch16", out_dim=8, decoder_depth=0, **TINY)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = _mask(2, (2, 2, 2))
    out = model(video, mask)
    dec = model.decoder
    for i in range(2):
        positions = mask[i].nonzero().squeeze(1)
        table = torch.from_numpy(np.stack([
            [math.sin(p / 10000 ** (2 * (j // 2) / 24)) if j % 2 == 0 else math.cos(p / 10000 ** (2 * (j // 2) / 24))
             for j in range(24)] for p in range(8)])).float()
        want = dec.head(dec.norm(dec.mask_token[0] + table[positions]))
        torch.testing.assert_close(out[i], want)


def test_encoder_sees_only_visible_tubes():
    torch.manual_seed(0)
    enc = sm.create_encoder("sigma_vit_tiny_patch16", **TINY)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = _mask(2, (2, 2, 2))
    changed = video.clone()
    voxel_mask = mask.reshape(2, 1, 2, 1, 2, 1, 2, 1).expand(2, 3, 2, 2, 2, 16, 2, 16).reshape(2, 3, 4, 32, 32)
    changed[voxel_mask] = torch.randn(int(voxel_mask.sum()))
    torch.testing.assert_close(enc(changed, mask), enc(video, mask))
    assert not torch.allclose(enc.forward_features(changed), enc.forward_features(video))


def test_timm_registry_and_config_round_trip():
    names = timm.list_models("sigma_*")
    assert set(names) == {"sigma_vit_tiny_patch16", "sigma_vit_small_patch16", "sigma_vit_base_patch16"}
    model = timm.create_model("sigma_vit_tiny_patch16", out_dim=32, **TINY)
    assert isinstance(model, sm.VideoMAEPretrainModel) and model.decoder.head.out_features == 32
    cfg = json.loads(json.dumps(model.config.to_dict()))
    again = sm.create_model(**cfg)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no weights can be downloaded"):
        timm.create_model("sigma_vit_tiny_patch16", pretrained=True)


def test_videomae_initialisation():
    torch.manual_seed(0)
    model = sm.create_model("sigma_vit_tiny_patch16", **TINY)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            bound = math.sqrt(6 / (m.in_features + m.out_features))  # xavier-uniform
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound, name
            assert m.bias is None or (m.bias == 0).all(), name
    attn = model.encoder.blocks[0].attn
    assert (attn.q_bias == 0).all() and (attn.v_bias == 0).all() and attn.qkv.bias is None
    token = model.decoder.mask_token
    assert 0.01 < token.std() < 0.03 and token.abs().max() <= 2.0
    assert not any(k.endswith("pos_embed") for k in model.state_dict())  # fixed table: not stored


def test_k_bias_has_no_effect():
    """q/v biases only: equal to timm's full qkv bias with any k part (softmax drops it)."""
    torch.manual_seed(0)
    ours = sm.QVBiasAttention(48, num_heads=3, qkv_bias=True)
    ref = timm.models.vision_transformer.Attention(48, num_heads=3, qkv_bias=True)
    with torch.no_grad():
        ours.q_bias.normal_()
        ours.v_bias.normal_()
        ref.qkv.weight.copy_(ours.qkv.weight)
        ref.qkv.bias.copy_(torch.cat([ours.q_bias, torch.randn(48), ours.v_bias]))
        ref.proj.load_state_dict(ours.proj.state_dict())
    x = torch.randn(2, 5, 48)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_drop_path_layer_scale_and_checkpointing():
    torch.manual_seed(0)
    model = sm.create_model("sigma_vit_tiny_patch16", out_dim=8, drop_path_rate=0.5, init_values=0.1, **TINY)
    assert "encoder.blocks.0.ls1.gamma" in model.state_dict()
    assert model.encoder.blocks[0].ls1.gamma.eq(0.1).all()
    video, mask = torch.randn(2, 3, 4, 32, 32), _mask(2, (2, 2, 2))
    model.eval()
    torch.testing.assert_close(model(video, mask), model(video, mask))
    model.train()
    outs = [model(video, mask) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])  # stochastic depth is on in training
    # gradient checkpointing: same gradients
    model = sm.create_model("sigma_vit_tiny_patch16", out_dim=8, **TINY)
    model(video, mask).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(video, mask).square().sum().backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_classifier_pooling_and_layer_decay_groups():
    torch.manual_seed(0)
    clf = sm.create_classifier("sigma_vit_tiny_patch16", num_classes=5, **TINY)
    video = torch.randn(2, 3, 4, 32, 32)
    assert clf(video).shape == (2, 5)
    assert isinstance(clf.encoder.norm, torch.nn.Identity)
    tokens = clf.encoder.forward_features(video)
    torch.testing.assert_close(clf.encoder.forward_pooled(video), clf.encoder.fc_norm(tokens.mean(1)))
    torch.testing.assert_close(clf(video), clf.head(clf.encoder.fc_norm(tokens.mean(1))))
    from timm.optim import param_groups_layer_decay
    groups = param_groups_layer_decay(clf, weight_decay=0.05, no_weight_decay_list=clf.no_weight_decay(),
                                      layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) == clf.config.depth + 2  # stem, every block, then norm/head
    head_group = next(g for g in groups if any(p is clf.head.weight for p in g["params"]))
    assert head_group["lr_scale"] == 1.0


# --- projections -------------------------------------------------------------------------------

def _tube_by_hand(video, b, token, grid, tube):
    """Float64 normalised voxels of one tube, sliced from the clip directly (channel-last flattening)."""
    gt, gh, gw = grid
    t, rem = divmod(token, gh * gw)
    h, w = divmod(rem, gw)
    pt, ph, pw = tube
    vox = video[b, :, t * pt:(t + 1) * pt, h * ph:(h + 1) * ph, w * pw:(w + 1) * pw].double()
    vox = vox.permute(1, 2, 3, 0).reshape(-1, video.shape[1])  # (pt·ph·pw, C)
    return ((vox - vox.mean(0)) / (vox.std(0, unbiased=True) + 1e-6)).reshape(-1)


def test_pixel_projection_is_videomaes_normalised_target():
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 48)
    mask = _mask(2, (2, 2, 3))
    proj = sm.create_projection("pixels")
    out = proj(video, mask)
    assert out.shape == (2, int(mask[0].sum()), 1536) and proj.out_dim == 1536 and not proj.trainable
    raw = sm.unnormalize_video(video)
    for b in range(2):
        for j, token in enumerate(mask[b].nonzero().squeeze(1).tolist()):
            torch.testing.assert_close(out[b, j].double(), _tube_by_hand(raw, b, token, (2, 2, 3), (2, 16, 16)),
                                       atol=2e-5, rtol=1e-5)


def test_mlp_projection_runs_the_mlp_on_the_masked_tubes():
    torch.manual_seed(0)
    video = torch.randn(2, 3, 2, 16, 32)
    mask = _mask(2, (1, 2, 4))
    proj = sm.create_projection("mlp", out_dim=8, tube_size=(2, 8, 8), hidden_dims=(16,))
    assert proj.trainable and proj.out_dim == 8 and proj.in_dim == 384
    out = proj(video, mask)
    raw = sm.unnormalize_video(video)
    for b in range(2):
        for j, token in enumerate(mask[b].nonzero().squeeze(1).tolist()):
            x = _tube_by_hand(raw, b, token, (1, 2, 4), (2, 8, 8)).float()
            torch.testing.assert_close(out[b, j], proj.net(x), atol=1e-5, rtol=1e-5)
    # same state dict as the plain MLP module
    assert proj.state_dict().keys() == sm.TubeProjectionMLP(384, (16,), 8).state_dict().keys()
    with pytest.raises(ValueError, match="kind"):
        sm.create_projection("clip")
    with pytest.raises(ValueError, match="out_dim=256"):
        sm.create_projection("pixels", out_dim=256)


def _random_dino_state(arch="vit_small_patch16_224", seed=0):
    """Random weights in the layout of timm's (and DINO's) ViT: shapes from a meta-device model, values
    drawn directly (much faster than timm's init, which these tests do not need)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model(arch, num_classes=0).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * (0.02 if len(shape) > 1 else 1.0) for k, shape in shapes.items()}


def test_dino_projection_loads_official_and_timm_layouts_and_aligns_tokens(tmp_path):
    state = _random_dino_state()
    official = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(state, official)
    training = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in state.items()}, "head.mlp.0.weight": torch.ones(2, 2)},
                "epoch": 3}, training)
    from safetensors.torch import save_file
    timm_file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(timm_file))

    torch.manual_seed(1)
    video = torch.randn(1, 3, 4, 32, 48)  # frames differ; tubes 2×16×16 -> grid (2, 2, 3)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, [0, 4, 7, 11]] = True
    for path in (training, timm_file):  # the same tensors under the same names, whatever the layout
        other = sm.read_dino_state_dict(path)
        assert other.keys() == state.keys() and all(torch.equal(other[k], v) for k, v in state.items())
    proj = sm.create_projection("dino", weights=official)
    assert proj.out_dim == 384 and not proj.trainable and proj.arch == "small"
    assert not any(p.requires_grad for p in proj.parameters())
    out = proj(video, mask)
    assert out.shape == (1, 4, 384)
    with torch.no_grad():  # timm's ViT on frames 0 and 2 alone: (1, 6, 384) patch tokens each
        per_frame = [proj.model.forward_features(video[:, :, f])[:, 1:] for f in (0, 2)]
    tokens = torch.cat(per_frame, dim=1)[0]  # (12, 384): (t, h, w) row-major
    want = (tokens - tokens.mean(0)) / (tokens.std(0, unbiased=True) + 1e-6)
    torch.testing.assert_close(out[0], want[[0, 4, 7, 11]], atol=1e-4, rtol=1e-4)
    proj.train()
    assert not proj.model.training


def test_dino_projection_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        sm.create_projection("dino", weights=tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="allow_random_weights"):
        sm.create_projection("dino")
    wrong = tmp_path / "videomae.pth"
    torch.save(sm.create_model("sigma_vit_tiny_patch16", **TINY).state_dict(), wrong)
    with pytest.raises(ValueError, match="not a DINO"):
        sm.create_projection("dino", weights=wrong)
    pickled = tmp_path / "code.pth"
    torch.save({"model": _random_dino_state}, pickled)  # a function: unpickling would import and run code
    with pytest.raises(ValueError, match="refusing to load"):
        sm.create_projection("dino", weights=pickled)
    base = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.save(_random_dino_state("vit_base_patch16_224"), base)
    assert sm.create_projection("dino", weights=base).out_dim == 768
    with pytest.raises(ValueError, match="holds a ViT-base"):
        sm.create_projection("dino", weights=base, arch="small")
    assert sm.create_projection("dino", allow_random_weights=True).out_dim == 384
    with pytest.raises(ValueError, match="16×16"):
        sm.create_projection("dino", allow_random_weights=True, tube_size=(2, 8, 8))


# --- timm stays optional for the loss side -------------------------------------------------------

def test_loss_tubes_and_mlp_import_without_timm():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "timm" or name.startswith("timm."):
                    raise ImportError("timm blocked for this test")
        sys.meta_path.insert(0, Block())
        import torch
        import sigma_kernels
        from sigma.losses import SinkhornSwapLoss
        from sigma.models.tubes import tube_pixels, patchify_tubes, normalize_tubes
        from sigma.models.projections import TubeProjectionMLP, create_projection
        import sigma.models
        assert sigma.models.tube_pixels is tube_pixels
        video = torch.randn(1, 3, 2, 16, 16)
        mask = torch.ones(1, 1, dtype=torch.bool)
        assert create_projection("mlp", out_dim=4)(video, mask).shape == (1, 1, 4)
        assert TubeProjectionMLP()(tube_pixels(torch.randn(1, 3, 2, 16, 16))).shape == (1, 1, 256)
        try:
            sigma.models.create_model
        except ImportError as exc:
            assert "timm" in str(exc)
        else:
            raise AssertionError("create_model without timm should raise ImportError")
        assert "timm" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_projection_errors_name_the_layout_expected():
    from sigma.models import MLPProjection, TubeProjectionMLP
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, :4] = True
    with pytest.raises(ValueError, match=r"looks like \(B, T, C, H, W\).*transpose\(1, 2\)"):
        MLPProjection()(torch.randn(1, 8, 3, 32, 32), mask)
    with pytest.raises(ValueError, match=r"tubes must be \(\.\.\., in_dim=1536\)"):
        TubeProjectionMLP()(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="not divisible by tube_size") as err:
        MLPProjection()(torch.randn(1, 3, 8, 30, 32), mask)
    assert "looks like" not in str(err.value)  # a (B, C, T, H, W) clip gets no layout hint


@pytest.mark.parametrize("bad,named", [({"depth": -3}, "depth"), ({"depth": 0}, "depth"),
                                       ({"num_heads": 0}, "num_heads"), ({"drop_path_rate": 5}, "drop_path_rate"),
                                       ({"embed_dim": 2.5}, "embed_dim")])
def test_model_config_refuses_sizes_that_build_a_broken_model(bad, named):
    """depth=-3 trained and saved an encoder with no blocks; num_heads=0 was a ZeroDivisionError."""
    with pytest.raises(ValueError, match=named):
        sm.VideoViTConfig(**bad)
    assert sm.VideoViTConfig(decoder_depth=0).decoder_depth == 0  # a decoder may be its head alone


def test_nan_weights_are_named_before_clustering():
    """segment / visualize on a checkpoint with NaN weights failed inside scikit-learn's k-means."""
    from sigma.evaluate.common import require_finite_weights

    enc = sm.create_model("sigma_vit_tiny_patch16", num_frames=2, img_size=16, depth=1).encoder
    require_finite_weights(enc, "ok.pt", "segmentation")
    with torch.no_grad():
        enc.patch_embed.proj.weight[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"--checkpoint 'bad.pt': 1 of its parameter tensors are not finite "
                                         r"\(first: patch_embed.proj.weight\); segmentation needs finite"):
        require_finite_weights(enc, "bad.pt", "segmentation")
