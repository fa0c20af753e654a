"""Classification metrics and the two frozen-feature probes (k-NN, linear) on feature tensors.

Everything here works on tensors already in memory: features (N, C) float, labels (N,) int64 in
[0, num_classes). Accuracies are reported in percent. Nothing here knows about videos or models.
"""
import math
import warnings

import torch
import torch.nn.functional as F


def check_labels(name, labels, num_classes=None):
    """labels: 1-D int tensor of class indices in [0, num_classes) (clear error otherwise)."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
        raise ValueError(f"{name}: expected a 1-D integer tensor of class indices, got "
                         f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0 (unlabelled clips, label -1, cannot be scored); "
                         f"found {int(labels.min())}")
    if num_classes is not None and labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"{name}: label {int(labels.max())} is outside the {num_classes} known classes "
                         f"(0..{num_classes - 1})")
    return labels


def _check_features(name, feats, labels=None):
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or not feats.dtype.is_floating_point:
        raise ValueError(f"{name}: expected a 2-D float tensor (N, C), got "
                         f"{getattr(feats, 'dtype', type(feats))} {tuple(getattr(feats, 'shape', ()))}")
    if labels is not None and labels.shape[0] != feats.shape[0]:
        raise ValueError(f"{name}: {feats.shape[0]} feature rows but {labels.shape[0]} labels")
    bad = non_finite_rows(feats)
    if len(bad):
        raise ValueError(f"{name}: {len(bad)} of {feats.shape[0]} rows are not finite (NaN or inf; first: row "
                         f"{int(bad[0])}); a score of such features would be meaningless")
    return feats


def non_finite_rows(feats):
    """Indices (int64 (n,)) of the rows of feats (N, C) holding a NaN or an infinity."""
    return (~torch.isfinite(feats).all(dim=1)).nonzero().flatten()


def check_knn_settings(k, temperature, weighted=True):
    """Clear errors for a k that is not a positive int or, when weighted, a temperature that is
    not a finite number > 0 (exp(sim / T) has no meaning for T <= 0)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if weighted and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                     or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"temperature must be a finite number > 0 (the votes weigh exp(similarity / temperature)), "
                         f"got {temperature!r}")


def topk_accuracy(scores, labels, ks=(1, 5)):
    """scores (N, K) (higher = more likely), labels (N,) -> {k: % of rows whose label is among the
    top-k scores}; k is capped at K (top-5 of a 3-class problem is top-3 = 100%)."""
    out = {}
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # (N, kmax)
    hit = top == labels[:, None]
    for k in ks:
        out[k] = 100.0 * hit[:, :min(k, kmax)].any(dim=1).float().mean().item() if len(labels) else float("nan")
    return out


def mean_class_accuracy(pred, labels, num_classes):
    """Mean over the classes present in `labels` of the per-class recall (%), pred/labels (N,)."""
    correct = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, dtype=torch.float64)
    total.index_add_(0, labels.cpu(), torch.ones(len(labels), dtype=torch.float64))
    correct.index_add_(0, labels.cpu(), (pred.cpu() == labels.cpu()).double())
    present = total > 0
    return 100.0 * (correct[present] / total[present]).mean().item() if present.any() else float("nan")


def classification_metrics(scores, labels, num_classes=None):
    """scores (N, K), labels (N,) -> dict(top1, top5, mean_class_accuracy, num_samples) in %."""
    num_classes = scores.shape[1] if num_classes is None else num_classes
    check_labels("labels", labels, num_classes)
    scores = scores.detach().float().cpu()
    labels = labels.cpu()
    acc = topk_accuracy(scores, labels, (1, 5))
    return {"top1": acc[1], "top5": acc[5],
            "mean_class_accuracy": mean_class_accuracy(scores.argmax(1), labels, num_classes),
            "num_samples": len(labels)}


@torch.no_grad()
def knn_scores(train_feats, train_labels, test_feats, num_classes, k=20, temperature=0.07, weighted=True,
               chunk_size=1024):
    """Class scores (N_test, num_classes) of a cosine k-nearest-neighbour vote.

    Each test clip takes its k most cosine-similar training clips; each neighbour votes for its
    label with weight exp(sim / temperature) when `weighted` (the DINO / InstDisc convention), else 1.
    The weights are normalised to sum to 1 over each clip's k neighbours (a softmax of sim / T):
    the same ranking of classes, and no overflow however small T is (exp(1 / 0.01) is past
    float32's range). temperature must be > 0. A k above the N_train training clips is capped at
    N_train with a warning. Test rows are processed `chunk_size` at a time so the similarity
    matrix never exceeds chunk_size × N_train.
    """
    check_knn_settings(k, temperature, weighted)
    _check_features("train_feats", train_feats, train_labels)
    _check_features("test_feats", test_feats)
    check_labels("train_labels", train_labels, num_classes)
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train_feats has {train_feats.shape[1]} channels, test_feats {test_feats.shape[1]}")
    k = capped_k(k, train_feats.shape[0])
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float().to(train.device), dim=1)
    labels = train_labels.to(train.device)
    out = torch.zeros(test.shape[0], num_classes, device=train.device)
    for s in range(0, test.shape[0], chunk_size):
        sim, idx = (test[s:s + chunk_size] @ train.T).topk(k, dim=1)
        w = (sim / temperature).softmax(dim=1) if weighted else torch.ones_like(sim)
        out[s:s + chunk_size].scatter_add_(1, labels[idx], w)
    return out


def capped_k(k, num_train):
    """min(k, num_train), warning when k is capped (a vote over every training clip is no k-NN)."""
    if k > num_train:
        warnings.warn(f"k={k} exceeds the {num_train} training clips; using k={num_train}", stacklevel=2)
        return num_train
    return k


def knn_evaluate(train_feats, train_labels, test_feats, test_labels, num_classes, k=20, temperature=0.07,
                 weighted=True):
    """k-NN classification metrics (see `knn_scores`): dict(top1, top5, mean_class_accuracy, ...)."""
    check_labels("test_labels", test_labels, num_classes)
    _check_features("test_feats", test_feats, test_labels)
    scores = knn_scores(train_feats, train_labels, test_feats, num_classes, k, temperature, weighted)
    out = classification_metrics(scores, test_labels, num_classes)
    out.update(k=min(k, train_feats.shape[0]), k_requested=k, temperature=temperature, weighted=weighted)
    return out


class LinearProbe(torch.nn.Module):
    """Standardisation with frozen training-set statistics (a BatchNorm without affine, as MAE's
    linear probe) followed by a linear layer: (N, C) -> (N, num_classes)."""

    def __init__(self, dim, num_classes, generator=None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.head = torch.nn.Linear(dim, num_classes)
        torch.nn.init.trunc_normal_(self.head.weight, std=0.01, generator=generator)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head((x - self.mean) / self.std)


class AttentiveProbe(torch.nn.Module):
    """Attentive probing (as V-JEPA evaluates frozen video features): the tokens, standardised with
    frozen training-set statistics, are cross-attended by one learned query (torch's
    MultiheadAttention), and a LayerNorm + linear layer classify the result: (N, L, C) ->
    (N, num_classes). Unlike a mean over the tokens, the attention can pick the object's tokens."""

    def __init__(self, dim, num_classes, heads=4, generator=None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: the attentive probe's {heads} heads must divide the feature width {dim}")
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.query = torch.nn.Parameter(torch.zeros(1, 1, dim))
        torch.nn.init.trunc_normal_(self.query, std=0.02, generator=generator)
        self.attn = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, num_classes)
        torch.nn.init.trunc_normal_(self.head.weight, std=0.01, generator=generator)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x):
        x = (x - self.mean) / self.std
        pooled, _ = self.attn(self.query.expand(x.shape[0], -1, -1), x, x, need_weights=False)
        return self.head(self.norm(pooled[:, 0]))


def train_linear_probe(train_feats, train_labels, num_classes, *, epochs=100, batch_size=256, lr=1e-3,
                       weight_decay=1e-4, seed=0, device=None, log_every=0, pooling="mean", heads=4):
    """Fit a probe on frozen features with AdamW + cosine decay (no warmup), cross-entropy.

    pooling="mean": a `LinearProbe` on pooled features train_feats (N, C) float; "attentive": an
    `AttentiveProbe` on token features (N, L, C) float. train_labels (N,) int64. Returns (probe,
    history) with the mean training loss of every epoch in history["loss"]. Deterministic for a
    given seed on one device.
    """
    if pooling not in ("mean", "attentive"):
        raise ValueError(f"pooling must be 'mean' or 'attentive', got {pooling!r}")
    if pooling == "attentive":
        if not isinstance(train_feats, torch.Tensor) or train_feats.dim() != 3:
            raise ValueError(f"train_feats: the attentive probe expects token features (N, L, C), got "
                             f"{tuple(getattr(train_feats, 'shape', ()))}")
        _check_features("train_feats", train_feats.flatten(1), train_labels)
    else:
        _check_features("train_feats", train_feats, train_labels)
    check_labels("train_labels", train_labels, num_classes)
    device = torch.device(device) if device is not None else train_feats.device
    x = train_feats.float().to(device)
    y = train_labels.to(device)
    gen = torch.Generator().manual_seed(seed)
    if pooling == "attentive":
        # MultiheadAttention draws its init from the global stream: seed it (the caller's stream is
        # left as it was) for a repeatable probe
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            probe = AttentiveProbe(x.shape[-1], num_classes, heads=heads, generator=gen)
        params = probe.parameters()
    else:
        probe = LinearProbe(x.shape[1], num_classes, generator=gen)
        params = probe.head.parameters()
    probe = probe.to(device)
    flat = x.reshape(-1, x.shape[-1])
    probe.mean.copy_(flat.mean(0))
    probe.std.copy_(flat.std(0, unbiased=False) + 1e-6)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    history = {"loss": []}
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros((), device=device)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)
        history["loss"].append((total / n).item())  # one sync per epoch
        if log_every and (epoch + 1) % log_every == 0:
            print(f"{pooling} probe epoch {epoch + 1}/{epochs} loss {history['loss'][-1]:.4f}", flush=True)
    return probe.eval(), history


@torch.no_grad()
def linear_probe_scores(probe, feats, batch_size=256):
    """Logits (N, num_classes) of a trained probe on features (N, C) (or tokens (N, L, C) for the
    attentive probe)."""
    dev = probe.head.weight.device
    return torch.cat([probe(feats[s:s + batch_size].float().to(dev)).cpu()
                      for s in range(0, feats.shape[0], batch_size)]) if len(feats) else torch.zeros(0)
