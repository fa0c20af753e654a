"""Original VideoMAE/SIGMA training checkpoints, as their code writes them, read as they are.

The fixture reproduces what VideoMAE's `utils.save_model` stores: `model` (its layout), `optimizer`
(AdamW with `lr_scale` groups whose lr / weight decay are numpy.float64, as its numpy schedules set
them), `scaler` (a GradScaler state), `epoch`, `args` (argparse.Namespace), plus SIGMA's
`projection` and `criterion` entries.
"""
import argparse
import fractions
import io
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

import sigma.models as sm  # noqa: E402
from sigma import SinkhornSwapLoss  # noqa: E402
from sigma.engine.files import safe_torch_load  # noqa: E402
from sigma.masking import tube_mask  # noqa: E402
from sigma.models.projections import TubeProjectionMLP  # noqa: E402

WIDTHS = {  # VideoMAE's ViT-S and ViT-B (encoder width, heads; decoder width, heads), depth 2 here
    "small": dict(embed_dim=384, num_heads=6, decoder_embed_dim=192, decoder_num_heads=3),
    "base": dict(embed_dim=768, num_heads=12, decoder_embed_dim=384, decoder_num_heads=6),
}
CLIP = dict(num_frames=4, img_size=32)
NUMPY1_SCALAR = b"numpy.core.multiarray\nscalar"
NUMPY2_SCALAR = b"numpy._core.multiarray\nscalar"


def _source_model(width, seed=0):
    torch.manual_seed(seed)
    model = sm.create_model("sigma_vit_small_patch16", out_dim=64, depth=2, decoder_depth=2, **WIDTHS[width], **CLIP)
    with torch.no_grad():  # every parameter random, so a misplaced tensor shows
        gen = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _videomae_checkpoint(model, epoch=3):
    """A dict with the entries and value types VideoMAE's save_model + SIGMA's additions write."""
    projection = TubeProjectionMLP(in_dim=1536, hidden_dims=(32,), out_dim=64)
    criterion = SinkhornSwapLoss(num_prototypes=16, dim=64)
    groups = [{"params": [p for n, p in model.named_parameters() if p.ndim > 1], "weight_decay": 0.05, "lr_scale": 1.0},
              {"params": [p for n, p in model.named_parameters() if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": 1.0},
              {"params": [*projection.parameters(), *criterion.parameters()], "weight_decay": 0.05, "lr_scale": 1.0}]
    optimizer = torch.optim.AdamW(groups, lr=1.5e-4, betas=(0.9, 0.95))
    lr_schedule = np.linspace(1e-6, 1.5e-4, 10)        # VideoMAE's cosine_scheduler returns numpy arrays
    wd_schedule = np.full(10, 0.05)
    for group in optimizer.param_groups:
        group["lr"] = lr_schedule[epoch] * group["lr_scale"]             # numpy.float64, as in its loop
        if group["weight_decay"] > 0:
            group["weight_decay"] = wd_schedule[epoch]
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    args = argparse.Namespace(model="pretrain_videomae_small_patch16_224", input_size=CLIP["img_size"],
                              num_frames=CLIP["num_frames"], mask_ratio=0.9, mask_type="tube", decoder_depth=2,
                              lr=lr_schedule[-1], window_size=(2, 2, 2), patch_size=(16, 16), normlize_target=True,
                              output_dir="runs/x", epochs=10)
    return {"model": sm.to_videomae_state_dict(model), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "scaler": scaler.state_dict(), "args": args, "projection": projection.state_dict(),
            "criterion": criterion.state_dict()}


def _as_numpy1(path):
    """Rewrite a torch zip checkpoint so its pickle names numpy.core.multiarray.scalar, as files written
    under numpy 1.x do (numpy 2 writes numpy._core.multiarray.scalar)."""
    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name, data in entries:
            if name.endswith("/data.pkl"):
                assert NUMPY2_SCALAR in data
                data = data.replace(NUMPY2_SCALAR, NUMPY1_SCALAR)
            out.writestr(name, data)


def _pickle_bytes(path):
    with zipfile.ZipFile(path) as src:
        return src.read(next(n for n in src.namelist() if n.endswith("/data.pkl")))


@pytest.mark.parametrize("numpy_path", ["numpy2", "numpy1"])
@pytest.mark.parametrize("width", ["small", "base"])
def test_videomae_training_checkpoint_loads_as_it_is(tmp_path, width, numpy_path):
    model = _source_model(width)
    path = tmp_path / "checkpoint-3.pth"
    torch.save(_videomae_checkpoint(model), path)
    if numpy_path == "numpy1":
        _as_numpy1(path)
    data = _pickle_bytes(path)
    assert (NUMPY1_SCALAR if numpy_path == "numpy1" else NUMPY2_SCALAR) in data
    with pytest.raises(pickle.UnpicklingError, match="scalar"):   # torch's own default refuses the file
        torch.load(path, weights_only=True)

    ckpt = safe_torch_load(path)
    assert isinstance(ckpt["optimizer"]["param_groups"][0]["lr"], np.float64)
    assert ckpt["scaler"]["scale"] == 65536.0 and isinstance(ckpt["args"], argparse.Namespace)

    heads = {k: WIDTHS[width][k] for k in ("num_heads", "decoder_num_heads")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # clip size read from args, heads given: nothing assumed
        loaded = sm.load_model(path, **heads)
    assert loaded.config.num_frames == 4 and loaded.config.img_size == (32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the decoder's heads do not matter to the encoder
        encoder = sm.load_encoder(path, num_heads=heads["num_heads"])
    gen = torch.Generator().manual_seed(1)
    video = torch.randn(2, 3, 4, 32, 32, generator=gen)
    mask = tube_mask(2, (2, 2, 2), 0.5, generator=gen)
    with torch.no_grad():
        assert (loaded(video, mask) - model(video, mask)).abs().max().item() <= 1e-6
        assert (encoder(video, mask) - model.encoder(video, mask)).abs().max().item() <= 1e-6


def test_videomae_files_do_not_say_head_counts_and_the_loader_warns(tmp_path):
    # a tiny model whose decoder heads are 12 wide: read back with the 64-wide assumption it differs,
    # so the loader must say what it assumed
    torch.manual_seed(0)
    model = sm.create_model("sigma_vit_tiny_patch16", out_dim=16, embed_dim=48, depth=2, num_heads=3,
                            decoder_embed_dim=24, decoder_num_heads=2, **CLIP).eval()
    path = tmp_path / "exported.pth"
    torch.save({"model": sm.to_videomae_state_dict(model)}, path)
    with pytest.warns(UserWarning, match=r"num_heads=1, decoder_num_heads=1, num_frames=16, img_size=224 "):
        sm.load_model(path)
    with pytest.warns(UserWarning, match=r"does not store num_heads, decoder_num_heads: assumed num_heads=1, "
                                         r"decoder_num_heads=1 \("):
        guessed = sm.load_model(path, **CLIP)
    told = sm.load_model(path, num_heads=3, decoder_num_heads=2, **CLIP)
    gen = torch.Generator().manual_seed(2)
    video = torch.randn(2, 3, 4, 32, 32, generator=gen)
    mask = tube_mask(2, (2, 2, 2), 0.5, generator=gen)
    with torch.no_grad():
        assert (told(video, mask) - model(video, mask)).abs().max().item() <= 1e-6
        assert (guessed(video, mask) - model(video, mask)).abs().max().item() > 1e-3


def test_refusal_names_the_offending_global(tmp_path):
    path = tmp_path / "code.pth"
    torch.save({"model": {"w": torch.ones(1)}, "hook": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match=r"refusing to load .*code\.pth.*needs the global fractions\.Fraction"):
        safe_torch_load(path)
    arrays = tmp_path / "objects.pth"
    torch.save({"a": np.array([1, "x"], dtype=object)}, arrays)   # numpy arrays rebuild through a reconstructor
    with pytest.raises(ValueError, match=r"needs the global numpy\._core\.multiarray\._reconstruct"):
        safe_torch_load(arrays)
    buf = io.BytesIO()
    torch.save({"lr": np.float32(0.5), "steps": np.int64(7), "ok": np.bool_(True)}, buf)
    path = tmp_path / "scalars.pth"
    path.write_bytes(buf.getvalue())
    assert safe_torch_load(path) == {"lr": np.float32(0.5), "steps": 7, "ok": True}


class _Call:
    """Pickles as a call of `fn(*args)`: how a hostile file asks the unpickler to run something."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_allow_listed_numpy_constructors_build_only_numeric_values(tmp_path):
    """Was: numpy.dtype and numpy's scalar were allowed as they are, so a 2 KB file could ask for a
    zero-filled scalar of a 100 MB void dtype (or any size), or build string and void values."""
    from numpy._core.multiarray import scalar

    cases = {"void-bomb": _Call(scalar, _Call(np.dtype, "V100000000")),
             "string": _Call(scalar, _Call(np.dtype, "S8"), b"abcdefgh"),
             "no-bytes": _Call(scalar, _Call(np.dtype, "f8")),
             "short-bytes": _Call(scalar, _Call(np.dtype, "f8"), b"\0\0"),
             "subarray": _Call(np.dtype, ("f8", (1000, 1000)))}
    for name, payload in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save({"model": {"w": torch.ones(1)}, "x": payload}, path)
        with pytest.raises(ValueError, match=rf"refusing to load .*{name}\.pth: it asks for a numpy (dtype|scalar)"):
            safe_torch_load(path)


def test_a_refused_os_call_is_named(tmp_path):
    import os
    path = tmp_path / "system.pth"
    torch.save({"x": _Call(os.system, "true")}, path)
    with pytest.raises(ValueError, match=r"needs the global (posix|os)\.system"):
        safe_torch_load(path)
