"""A minimal VideoMAE-style pretraining loop trained with SinkhornSwapLoss (SIGMA w/ MLP).

Everything is tiny so it runs on a laptop CPU in seconds: 8-frame 64×64 synthetic clips,
2×16×16 tubes (4×4×4 = 64 tokens), 75% tube masking, a 2-block encoder and decoder.
The step is the VideoMAE one with the pixel-regression target replaced by SIGMA's:

    pred  = video_model(clips, mask)                   # (B, N_mask, D): decoder head -> D
    feats = projection(tube_pixels(clips)[mask])       # (M, D): MLP on normalised raw tubes
    loss  = criterion(pred, feats.view_as(pred))       # Sinkhorn-guided swapped prediction

    python examples/videomae_pretrain_step.py --steps 40

What to expect: the loss starts above 2·ln K (untrained features are not uniform over the
prototypes) and falls by 2-3 nats within a few dozen steps. This only shows the wiring: on toy
clips the printed assignment entropy soon sits near ln K and a part of the prototypes goes
unused — the diagnostics a real run (real clips, hundreds of epochs) would be watched with.
"""
import argparse
import math
import time

import torch

from sigma import SinkhornSwapLoss
from sigma.masking import tube_mask
from sigma.models import TubeProjectionMLP, create_model, tube_pixels

NUM_FRAMES, IMG_SIZE, TUBE = 8, 64, (2, 16, 16)


def synthetic_clips(batch_size, generator):
    """Drifting coloured sine gratings plus noise, (B, 3, T, H, W): the content of a masked tube
    can be inferred from the visible ones, so there is something to learn."""
    b = batch_size
    angle, freq, speed, phase = (torch.rand(4, b, 1, 1, 1, generator=generator)
                                 * torch.tensor([math.pi, 6.0, 0.6, 2 * math.pi])[:, None, None, None, None])
    t = torch.arange(NUM_FRAMES, dtype=torch.float32)[:, None, None]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, IMG_SIZE), torch.linspace(-1, 1, IMG_SIZE), indexing="ij")
    wave = torch.sin((2.0 + freq) * math.pi * (xx * torch.cos(angle) + yy * torch.sin(angle)) + speed * t + phase)
    colour = torch.rand(b, 3, 1, 1, 1, generator=generator) * 2 - 1
    noise = torch.randn(b, 3, NUM_FRAMES, IMG_SIZE, IMG_SIZE, generator=generator)
    return colour * wave[:, None] + 0.1 * noise


def build(dim=32, num_prototypes=64, backend="auto"):
    # the tiny named config, made smaller still (any field of the config can be overridden)
    video_model = create_model("sigma_vit_tiny_patch16", out_dim=dim, num_frames=NUM_FRAMES, img_size=IMG_SIZE,
                               tubelet_size=TUBE[0], patch_size=TUBE[1], embed_dim=64, depth=2, num_heads=2,
                               decoder_embed_dim=48, decoder_depth=2, decoder_num_heads=2)
    projection = TubeProjectionMLP(in_dim=math.prod(TUBE) * 3, hidden_dims=(256, 256, 128), out_dim=dim)
    criterion = SinkhornSwapLoss(num_prototypes=num_prototypes, dim=dim, epsilon=0.05, sinkhorn_iterations=10,
                                 temperature=0.1, backend=backend)
    return video_model, projection, criterion


def train_step(video_model, projection, criterion, optimizer, clips, mask, amp_dtype=None):
    """One SIGMA step; returns the loss (a tensor: no host sync here)."""
    with torch.autocast(clips.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        pred = video_model(clips, mask)                          # (B, N_mask, D)
        feats = projection(tube_pixels(clips, TUBE)[mask])       # (M, D), same token order as pred
        loss = criterion(pred, feats.view_as(pred))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def main(steps=40, batch_size=8, mask_ratio=0.75, seed=0, lr=2e-3, amp=False, backend="auto", log_every=10,
         verbose=True):
    """Train for `steps` steps on fresh synthetic clips; returns the list of losses (floats)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    video_model, projection, criterion = build(backend=backend)
    params = [*video_model.parameters(), *projection.parameters(), *criterion.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    grid = video_model.encoder.grid_size
    history = []
    start = time.perf_counter()
    for step in range(steps):
        clips = synthetic_clips(batch_size, gen)
        mask = tube_mask(batch_size, grid, mask_ratio, generator=gen)
        loss = train_step(video_model, projection, criterion, optimizer, clips, mask,
                          amp_dtype=torch.bfloat16 if amp else None)
        history.append(loss.item())  # logging: one sync per step is fine in an example
        if verbose and (step % log_every == 0 or step == steps - 1):
            s = criterion.last_stats
            print(f"step {step:3d}  loss {history[-1]:.3f}  (2 ln K = {2 * math.log(criterion.num_prototypes):.3f})  "
                  f"entropy_p {s['entropy_p']:.2f}  usage_perplexity_p {s['usage_perplexity_p']:.1f}  "
                  f"unused_p {int(s['unused_prototypes_p'])}  marginal_error_p {s['marginal_error_p']:.1e}")
    if verbose:
        print(f"{steps} steps in {time.perf_counter() - start:.1f} s")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    main(steps=args.steps, batch_size=args.batch_size, mask_ratio=args.mask_ratio, seed=args.seed, lr=args.lr,
         amp=args.amp, backend=args.backend)
