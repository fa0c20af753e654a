"""SIGMA on an HF `transformers` VideoMAEForPreTraining: the masked predictions come from HF's own
encoder and decoder with a D-wide head, the targets from SIGMA's MLP projection.

HF's forward always computes its pixel loss, which fails for a head that is not 3·tubelet·patch²
wide, so `hf_masked_predictions` runs its encoder, decoder blocks, norm and head without it.
Everything is tiny (random weights from a config, 4×32² synthetic clips) so it runs on a CPU:

    python examples/hf_sigma_step.py            # 30 steps: the loss falls from about 8.7 to 6.5
"""
import argparse

import torch
from transformers import VideoMAEConfig, VideoMAEForPreTraining

from sigma import SinkhornSwapLoss
from sigma.masking import tube_mask
from sigma.models import create_projection, hf_masked_predictions, set_hf_head

D = 32


def build():
    config = VideoMAEConfig(image_size=32, num_frames=4, patch_size=16, tubelet_size=2, hidden_size=48,
                            num_hidden_layers=2, num_attention_heads=3, intermediate_size=192, decoder_hidden_size=24,
                            decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=96,
                            use_mean_pooling=False, layer_norm_eps=1e-6)
    model = VideoMAEForPreTraining(config)          # or VideoMAEForPreTraining.from_pretrained(local_dir)
    set_hf_head(model, D)                            # the decoder head now predicts D features per tube
    projection = create_projection("mlp", out_dim=D, tube_size=(2, 16, 16), hidden_dims=(64,))
    criterion = SinkhornSwapLoss(num_prototypes=16, dim=D, epsilon=0.05, sinkhorn_iterations=10, temperature=0.1)
    return model, projection, criterion


def main(steps=30, batch_size=4, seed=0, verbose=True):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model, projection, criterion = build()
    params = [*model.parameters(), *projection.parameters(), *criterion.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    grid = (2, 2, 2)                                 # (T/tubelet, H/patch, W/patch)
    losses = []
    for step in range(steps):
        video = torch.randn(batch_size, 3, 4, 32, 32, generator=gen)          # (B, C, T, H, W), normalised
        mask = tube_mask(batch_size, grid, 0.5, generator=gen)                  # True = masked
        pred = hf_masked_predictions(model, video.transpose(1, 2), mask)       # HF takes (B, T, C, H, W)
        target = projection(video, mask)                                       # (B, N_mask, D), same rows
        loss = criterion(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if verbose:
            print(f"step {step}  loss {losses[-1]:.3f}")
    if verbose and len(losses) >= 10:
        print(f"mean loss of the first 5 steps {sum(losses[:5]) / 5:.3f}, of the last 5 {sum(losses[-5:]) / 5:.3f}")
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(steps=args.steps, seed=args.seed)
