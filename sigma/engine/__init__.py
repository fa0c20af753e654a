"""What every training loop needs, shared by `sigma.pretrain` and `sigma.evaluate`.

Submodules import only torch (and numpy) at module level, so `sigma.engine.files` can read and
write checkpoints in an environment without timm or the video stack.
"""
