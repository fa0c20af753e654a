"""Evaluation of pretrained video encoders: k-NN and linear probes, fine-tuning, unsupervised video
object segmentation, and pictures (cluster maps, prototype assignments, training curves).

Metric cores work on tensors (`sigma.evaluate.metrics`, `sigma.evaluate.segmentation`); the tasks
that read checkpoints and videos are `python -m sigma.evaluate {knn,linear,finetune,segment,visualize}`
and the functions of the same names here.
"""
