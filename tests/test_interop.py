"""Weights interop: HF VideoMAE both ways, original VideoMAE files, our exports, pretraining checkpoints."""
import argparse
import warnings

import pytest
import torch

pytest.importorskip("timm")
tf = pytest.importorskip("transformers")

import sigma.models as sm  # noqa: E402
from sigma.masking import tube_mask  # noqa: E402

SMALL_HF = dict(image_size=32, num_frames=4, patch_size=16, tubelet_size=2, hidden_size=48, num_hidden_layers=2,
                num_attention_heads=3, intermediate_size=192, decoder_hidden_size=24, decoder_num_hidden_layers=2,
                decoder_num_attention_heads=2, decoder_intermediate_size=96, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
TINY = dict(num_frames=4, img_size=32, embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=24, decoder_num_heads=2)


def _randomise(module, seed=0):
    """Every parameter random (biases and norms too), so that a misplaced tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if name.endswith("norm.weight") or "layernorm" in name and name.endswith("weight")
                    or name.endswith(("norm1.weight", "norm2.weight")) else 0.05 * noise)
    return module.eval()


def _clip_and_mask(b=2, t=4, size=32, grid=(2, 2, 2), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, t, size, size, generator=gen), tube_mask(b, grid, 0.5, generator=gen)


def _close(a, b, tol=1e-6):
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol, f"max abs difference {err:.3g} > {tol}"


@pytest.mark.parametrize("eps,mean_pool", [(1e-6, False), (1e-12, True)])
def test_hf_pretraining_model_both_directions(eps, mean_pool):
    hf = _randomise(tf.VideoMAEForPreTraining(tf.VideoMAEConfig(**SMALL_HF, layer_norm_eps=eps,
                                                                use_mean_pooling=mean_pool)))
    video, mask = _clip_and_mask()
    ours = sm.from_transformers(hf)
    assert ours.config.norm_eps == eps and ours.config.out_dim == 1536
    with torch.no_grad():
        want = hf(video.transpose(1, 2), bool_masked_pos=mask).logits
        _close(ours(video, mask), want)
        back = sm.to_transformers(ours)
        _close(back(video.transpose(1, 2), bool_masked_pos=mask).logits, want)
    assert back.state_dict().keys() == hf.state_dict().keys()
    for k, v in hf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_ours_to_hf_and_back_with_pixel_head():
    model = _randomise(sm.create_model("sigma_vit_tiny_patch16", out_dim=1536, **TINY), seed=1)
    video, mask = _clip_and_mask(seed=1)
    hf = sm.to_transformers(model)
    assert isinstance(hf, tf.VideoMAEForPreTraining)
    with torch.no_grad():
        want = model(video, mask)
        _close(hf(video.transpose(1, 2), bool_masked_pos=mask).logits, want)
        again = sm.from_transformers(hf)
        _close(again(video, mask), want)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_ours_to_hf_with_a_sigma_head_gives_the_encoder():
    model = _randomise(sm.create_model("sigma_vit_tiny_patch16", out_dim=32, **TINY), seed=2)
    video, _ = _clip_and_mask(seed=2)
    with pytest.warns(UserWarning, match="VideoMAEModel"):
        hf = sm.to_transformers(model)
    assert isinstance(hf, tf.VideoMAEModel) and hf.layernorm is not None
    with torch.no_grad():
        _close(hf(video.transpose(1, 2)).last_hidden_state, model.encoder.forward_features(video))


@pytest.mark.parametrize("mean_pool", [False, True])
def test_hf_encoder_with_a_mask_both_directions(mean_pool):
    hf = _randomise(tf.VideoMAEModel(tf.VideoMAEConfig(**SMALL_HF, layer_norm_eps=1e-6, use_mean_pooling=mean_pool)),
                    seed=3)
    video, mask = _clip_and_mask(seed=3)
    enc = sm.from_transformers(hf)
    assert isinstance(enc, sm.VideoViTEncoder) and isinstance(enc.norm, torch.nn.Identity) == mean_pool
    with torch.no_grad():
        want = hf(video.transpose(1, 2), bool_masked_pos=mask).last_hidden_state
        _close(enc(video, mask), want)
        _close(sm.to_transformers(enc)(video.transpose(1, 2), bool_masked_pos=mask).last_hidden_state, want)


def test_hf_classifier_both_directions():
    hf = _randomise(tf.VideoMAEForVideoClassification(tf.VideoMAEConfig(**SMALL_HF, layer_norm_eps=1e-6,
                                                                         num_labels=7)), seed=4)
    video, _ = _clip_and_mask(seed=4)
    clf = sm.from_transformers(hf)
    assert isinstance(clf, sm.VideoClassifier) and clf.num_classes == 7
    with torch.no_grad():
        want = hf(video.transpose(1, 2)).logits
        _close(clf(video), want)
        _close(sm.to_transformers(clf)(video.transpose(1, 2)).logits, want)


def test_hf_vit_small_size_equality():
    """Once at ViT-S/16 size (16×224², 1568 tokens: the float64 position table matters here)."""
    cfg = tf.VideoMAEConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                            decoder_hidden_size=192, decoder_num_hidden_layers=4, decoder_num_attention_heads=3,
                            decoder_intermediate_size=768, layer_norm_eps=1e-6, use_mean_pooling=False)
    hf = tf.VideoMAEForPreTraining(cfg).eval()
    ours = sm.from_transformers(hf)
    assert sum(p.numel() for p in ours.encoder.parameters()) == sum(p.numel() for p in hf.videomae.parameters())
    gen = torch.Generator().manual_seed(5)
    video = torch.randn(1, 3, 16, 224, 224, generator=gen)
    mask = tube_mask(1, (8, 14, 14), 0.9, generator=gen)
    with torch.no_grad():
        _close(ours(video, mask), hf(video.transpose(1, 2), bool_masked_pos=mask).logits)


def test_hf_masked_predictions_with_a_sigma_head():
    hf = _randomise(tf.VideoMAEForPreTraining(tf.VideoMAEConfig(**SMALL_HF, layer_norm_eps=1e-6,
                                                                use_mean_pooling=False)), seed=6)
    video, mask = _clip_and_mask(seed=6)
    pixels = video.transpose(1, 2)
    with torch.no_grad():
        _close(sm.hf_masked_predictions(hf, pixels, mask), hf(pixels, bool_masked_pos=mask).logits)
        ours = sm.from_transformers(hf)
        head = sm.set_hf_head(hf, 32)
        ours.decoder.head = torch.nn.Linear(24, 32)
        ours.decoder.head.load_state_dict(head.state_dict())
        pred = sm.hf_masked_predictions(hf, pixels, mask)
        assert pred.shape == (2, 4, 32)
        _close(pred, ours(video, mask))
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        sm.hf_masked_predictions(hf, video, mask)


# --- original VideoMAE files ---------------------------------------------------------------------

def _videomae_pretrain_keys(depth, decoder_depth, layer_scale=False):
    """The key names of an original VideoMAE pretraining checkpoint (written out by hand)."""
    block = ["norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
             "mlp.fc2.bias"] + (["gamma_1", "gamma_2"] if layer_scale else [])
    keys = ["encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias", "encoder.norm.weight",
            "encoder.norm.bias", "encoder_to_decoder.weight", "mask_token", "decoder.norm.weight", "decoder.norm.bias",
            "decoder.head.weight", "decoder.head.bias"]
    keys += [f"encoder.blocks.{i}.{k}" for i in range(depth) for k in block]
    keys += [f"decoder.blocks.{i}.{k}" for i in range(decoder_depth) for k in block]
    return set(keys)


def test_original_videomae_pretraining_file(tmp_path):
    model = _randomise(sm.create_model("sigma_vit_tiny_patch16", out_dim=1536, init_values=0.1, **TINY), seed=7)
    state = sm.to_videomae_state_dict(model)
    assert set(state) == _videomae_pretrain_keys(2, 2, layer_scale=True)
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": state, "epoch": 799, "args": argparse.Namespace(model="pretrain_videomae_small_patch16_224",
                                                                           num_frames=4)}, path)
    # heads are not in the file: 64-wide heads are assumed (ViT-S/B/L), other widths are told
    sizes = dict(num_frames=4, img_size=32, num_heads=3, decoder_num_heads=2)
    loaded = sm.load_model(path, **sizes)
    assert loaded.config.init_values is not None and loaded.config.out_dim == 1536
    video, mask = _clip_and_mask(seed=7)
    with torch.no_grad():
        _close(loaded(video, mask), model(video, mask), tol=0)
    enc = sm.load_encoder(path, **sizes)
    with torch.no_grad():
        _close(enc(video, mask), model.encoder(video, mask), tol=0)


def test_original_videomae_finetuning_file(tmp_path):
    clf = _randomise(sm.create_classifier("sigma_vit_tiny_patch16", num_classes=5, **TINY), seed=8)
    state = sm.to_videomae_state_dict(clf)
    assert {"patch_embed.proj.weight", "blocks.0.attn.q_bias", "fc_norm.weight", "head.weight"} <= set(state)
    assert not any(k.startswith(("encoder.", "norm.")) for k in state)
    path = tmp_path / "checkpoint-best.pth"
    torch.save({"module": state, "args": argparse.Namespace(nb_classes=5)}, path)
    video, _ = _clip_and_mask(seed=8)
    loaded = sm.load_classifier(path, num_classes=5, num_frames=4, img_size=32, num_heads=3)
    with torch.no_grad():
        _close(loaded(video), clf(video), tol=0)
        enc = sm.load_encoder(path, num_frames=4, img_size=32, num_heads=3)
        _close(enc.forward_pooled(video), clf.encoder.forward_pooled(video), tol=0)


def test_checkpoints_are_read_without_running_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.ones(1)}, "hook": print}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        sm.load_model(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        sm.load_encoder(tmp_path / "missing.pth")
    ok = tmp_path / "ok.pth"
    torch.save({"args": argparse.Namespace(lr=1.0), "w": torch.ones(2)}, ok)
    assert sm.safe_torch_load(ok)["args"].lr == 1.0


def test_wrong_checkpoint_is_reported(tmp_path):
    model = sm.create_model("sigma_vit_tiny_patch16", out_dim=16, **TINY)
    state = sm.to_videomae_state_dict(model)
    state.pop("decoder.norm.bias")
    state["decoder.extra"] = torch.ones(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"missing keys: decoder\.norm\.bias[\s\S]*unexpected keys: decoder\.extra"):
        sm.load_model(path, num_frames=4, img_size=32)


# --- our formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pretrain", "encoder", "classifier"])
def test_save_and_load_pretrained(tmp_path, kind):
    model = {"pretrain": lambda: sm.create_model("sigma_vit_tiny_patch16", out_dim=16, **TINY),
             "encoder": lambda: sm.create_encoder("sigma_vit_tiny_patch16", **TINY),
             "classifier": lambda: sm.create_classifier("sigma_vit_tiny_patch16", num_classes=3, **TINY)}[kind]()
    _randomise(model, seed=9)
    out = sm.save_pretrained(model, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    for path in (out, out / "model.safetensors"):
        loaded = sm.load_pretrained(path)
        assert type(loaded) is type(model) and loaded.config == model.config
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    video, mask = _clip_and_mask(seed=9)
    with torch.no_grad():
        want = model.forward_features(video) if kind == "encoder" else model.encoder.forward_features(video)
        _close(sm.load_encoder(out).forward_features(video), want, tol=0)


def test_pretraining_checkpoint_format(tmp_path):
    model = _randomise(sm.create_model("sigma_vit_tiny_patch16", out_dim=16, **TINY), seed=10)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = {"format": "sigma-pretrain-v1", "step": 5, "epoch": 0,
            "model_config": {"name": "sigma_vit_tiny_patch16", "out_dim": 16, **TINY},
            "projection_config": {"kind": "mlp", "out_dim": 16}, "model": model.state_dict(), "projection": {},
            "loss": {}, "loss_config": {}, "optimizer": {}, "config": {"seed": 0}, "provenance": {"commit": "x"}}
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    video, mask = _clip_and_mask(seed=10)
    for path in (run, run / "checkpoints" / "last.pt"):
        with torch.no_grad():
            _close(sm.load_model(path)(video, mask), model(video, mask), tol=0)
            _close(sm.load_encoder(path)(video, mask), model.encoder(video, mask), tol=0)
    # fine-tuning from it: mean pooling drops the pretrained final norm, fc_norm starts fresh
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = sm.load_encoder(run, use_mean_pooling=True)
    assert any("fc_norm" in str(w.message) for w in caught)
    assert isinstance(enc.norm, torch.nn.Identity) and (enc.fc_norm.weight == 1).all()
    clf = sm.load_classifier(run, num_classes=4)
    torch.testing.assert_close(clf.encoder.blocks[1].attn.qkv.weight, model.encoder.blocks[1].attn.qkv.weight)


def test_hf_example_trains():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "hf_sigma_step.py"
    spec = importlib.util.spec_from_file_location("hf_sigma_step", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses = example.main(steps=3, verbose=False)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    model, _, _ = example.build()
    assert model.decoder.head.out_features == example.D


def test_malformed_files_are_one_error_naming_the_file(tmp_path):
    """Was: a bare KeyError ('model_config', 'encoder.blocks.0.mlp.fc1.weight') or safetensors' own
    error without the path."""
    from sigma.engine.files import PRETRAIN_FORMAT
    from sigma.models import load_encoder
    no_config = tmp_path / "no_config.pt"
    torch.save({"format": PRETRAIN_FORMAT, "model": {}}, no_config)
    with pytest.raises(ValueError, match=r"cannot read .*no_config\.pt as a sigma\.pretrain checkpoint: its "
                                         r"'model_config' entry is NoneType"):
        load_encoder(no_config)
    str_config = tmp_path / "str_config.pt"
    torch.save({"format": PRETRAIN_FORMAT, "model": {}, "model_config": "x"}, str_config)
    with pytest.raises(ValueError, match=r"str_config\.pt as a sigma\.pretrain checkpoint: its 'model_config' "
                                         r"entry is str"):
        load_encoder(str_config)
    no_mlp = tmp_path / "no_mlp.pth"
    torch.save({"model": {"encoder.patch_embed.proj.weight": torch.zeros(8, 3, 2, 16, 16)}}, no_mlp)
    with pytest.raises(ValueError, match=r"no_mlp\.pth"):
        load_encoder(no_mlp)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{\"a\"")
    with pytest.raises(ValueError, match=r"cannot read .*cut\.safetensors"):
        load_encoder(cut)
