"""What every training loop needs, shared by `sigma.pretrain` and `sigma.evaluate`.

- `files`: the one atomic writer (checkpoints carry their SHA-256), the one safe `torch.load`
  (which verifies it), the checkpoint format strings;
- `checkpoints`: the one checkpoint loader (format check on top of `files.safe_torch_load`),
  RNG states as plain tensors, parameter fingerprints;
- `provenance`: the one record of how a result was made (commit, versions, host, command);
- `distributed`: joining torchrun's process group, rank helpers, the resumable sampler;
- `seeding`: the one seeding policy (global, per rank, per worker, per sample);
- `amp`: the one mixed-precision policy (autocast + GradScaler);
- `interrupt`: SIGINT/SIGTERM finish the step, checkpoint, exit 130/143 (`GracefulStop`, `Interrupted`);
- `optim`: AdamW over timm's parameter groups, timm's cosine schedule, the lr scaling rule.

Submodules import only torch (and numpy) at module level (`optim` imports timm when called), so
checkpoints can be read and written in an environment without timm or the video stack.
"""
