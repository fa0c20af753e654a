"""The SIGMA objective (docs/method.md) as a loss module for VideoMAE-style training loops.

    criterion = SinkhornSwapLoss(num_prototypes=3000, dim=256)
    loss = criterion(pred, target_feats, bool_masked_pos)

All arithmetic is delegated to the `sigma_kernels` ops (which pick a backend); this module only
wires the objective (docs/method.md) together: prototype renormalisation, two Sinkhorn solves, two swapped
cross-entropies.
"""

import torch
import torch.nn as nn
from torch.fx.experimental.symbolic_shapes import guard_or_true

from sigma_kernels import (
    has_fused_swapped_products,
    normalize_rows,
    prototype_cross_entropy,
    prototype_cross_entropy_from_products,
    prototype_cross_entropy_sinkhorn,
    prototype_scores,
    prototype_softmax_products,
    prototype_swapped_products,
    rules,
    sinkhorn_assign_from_potentials,
    sinkhorn_assign_from_potentials_streaming,
    sinkhorn_solve,
    sinkhorn_streaming,
)
from sigma_kernels.backends import BACKENDS
from sigma_kernels.distributed import (
    global_count,
    sinkhorn_solve_distributed,
    sinkhorn_streaming_distributed,
    world_size,
)

from .diagnostics import assignment_stats

_TARGETS = ("hard", "soft")


def _require(ok, message):
    """ValueError(message) unless ok. A condition on a size torch.compile knows only at run time (the
    number of masked tokens) becomes a runtime assertion of the compiled graph instead."""
    if torch.compiler.is_compiling():
        torch._check(ok)  # the compiled graph's assertion names the failed condition
    elif not ok:
        raise ValueError(message)


class SinkhornSwapLoss(nn.Module):
    """Swapped prediction of Sinkhorn cluster assignments between a video model and a projection
    network (SIGMA; see docs/method.md). Owns the prototypes C (num_prototypes, dim), an nn.Parameter.

    Args:
        num_prototypes: K, number of prototypes (clusters).
        dim: D, feature dimension of `pred`, `target_feats` and the prototypes.
        epsilon: ε, entropic regularisation of Sinkhorn (Q ∝ exp(S/ε)); released configs 0.05/0.03.
        sinkhorn_iterations: (prototype, token) normalisation pairs per solve.
        temperature: τ of the prototype softmax in the cross-entropies.
        targets: "hard" (argmax of Q, ties to the lowest index; the released models) or "soft" (Q).
        backend: sigma_kernels backend, "auto" | "reference" | "cpu" | "triton" | "cuda".
        tol: optional early stop of Sinkhorn once the column marginal error <= tol, tested every
            `check_every` iterations (each test is one host sync; None = always run all iterations).
        check_every: see tol.
        streaming: True solves Sinkhorn from the factors (normalize(z), C) without storing the M×K
            scores (fused backends); False materialises the scores of one branch at a time; "auto"
            streams when the stored path's working set would exceed `score_memory_budget`. Hard
            targets are labelled once per branch and fed to a plain fused CE; soft targets are
            recomputed tile by tile from the other branch's potentials: in one swapped pass for
            both terms where the backend fuses it (`has_fused_swapped_products`), else per
            term. The cross-entropies never store M×K in the fused backends either way.
        score_memory_budget: bytes the stored-score path may hold for one branch under
            streaming="auto" (None: `SCORE_MEMORY_BUDGET[device type]`). The working set is
            M·K·`STORED_BYTES_PER_SCORE[device type]` bytes: on the CPU the scores and their
            exponentials (the exp-domain solve), on CUDA the scores. A fixed number, never the
            momentary free memory, so the path taken (and the result) depends only on the shapes
            and this setting. See docs/performance.md.
        process_group: data-parallel group for the global equipartition (docs/distributed.md). None uses the
            default group when torch.distributed is initialised with world size > 1.
        compute_stats: compute the diagnostics of `last_stats` at every forward.

    `last_stats` (after each forward) maps names to 0-d tensors, no host sync: loss_v and loss_p
    (the two terms), and per branch (_v: video model, _p: projection) entropy (mean nats of the
    assignment rows Q_i·), usage_perplexity (exp entropy of the hard-label histogram),
    unused_prototypes and marginal_error (Σ_k |Σ_i P_ik − 1/K| of the Sinkhorn plan). Under data
    parallelism these describe the global batch, except loss_v/loss_p: this rank's (scaled) share.

    Data parallelism: every rank's loss is Σ_{its tokens} ℓ_i · W / M_global (W ranks, M_global
    tokens over all ranks), so that gradient averaging over ranks (DDP, FSDP) yields exactly the
    gradient of the single-process loss on the concatenated batch; the mean of the ranks' losses
    is that loss (with equal token counts per rank, each rank's loss is its local mean). Put this
    module inside the DDP-wrapped model (or average the prototypes' gradient yourself) and keep the
    prototypes equal on all ranks.
    """

    # CUDA: recomputing score tiles on tensor cores is cheap, stream from 128 MiB of scores on.
    # CPU: every recomputation is a full fp32 GEMM, so the stored path (about 3× faster than
    # streaming at M = 180k, see docs/performance.md) is kept up to 8 GiB (M ≈ 358k at K = 3000).
    SCORE_MEMORY_BUDGET = {"cuda": 1 << 27, "cpu": 1 << 33}
    STORED_BYTES_PER_SCORE = {"cuda": 4, "cpu": 8}

    def __init__(self, num_prototypes=3000, dim=256, epsilon=0.05, sinkhorn_iterations=10, temperature=0.1,
                 targets="hard", backend="auto", tol=None, streaming="auto", process_group=None, *,
                 check_every=5, compute_stats=True, score_memory_budget=None):
        super().__init__()
        self.num_prototypes = rules.check_positive_int("num_prototypes", num_prototypes)
        self.dim = rules.check_positive_int("dim", dim)
        self.epsilon = rules.check_positive("epsilon", epsilon)
        # Unit features and prototypes bound the scores by 1, so ε alone decides whether float32
        # resolves the Sinkhorn logits; the potentials then stay within ~3/ε (docs/numerics.md).
        if 1.0 / self.epsilon > rules.POTENTIAL_LIMIT[torch.float32] / 4:
            raise ValueError(f"epsilon={epsilon!r} is too small for float32 Sinkhorn on cosine scores: it must be "
                             f">= {4 / rules.POTENTIAL_LIMIT[torch.float32]:.3g} (released configs use 0.05 and 0.03)")
        self.sinkhorn_iterations = rules.check_positive_int("sinkhorn_iterations", sinkhorn_iterations)
        self.temperature = rules.check_positive("temperature", temperature)
        if targets not in _TARGETS:
            raise ValueError(f"targets must be one of {_TARGETS}, got {targets!r}")
        self.targets = targets
        if not isinstance(backend, str) or backend not in ("auto",) + BACKENDS:
            raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
        self.backend = backend
        tol, check_every = rules.check_tolerance(tol, check_every)
        self.tol = tol if tol > 0 else None
        self.check_every = check_every
        if not (streaming is True or streaming is False or (isinstance(streaming, str) and streaming == "auto")):
            raise ValueError(f"streaming must be 'auto', True or False, got {streaming!r}")
        self.streaming = streaming
        self.process_group = process_group
        self.compute_stats = bool(compute_stats)
        if score_memory_budget is not None:
            score_memory_budget = rules.check_positive_int("score_memory_budget", score_memory_budget)
        self.score_memory_budget = score_memory_budget
        self.prototypes = nn.Parameter(torch.empty(self.num_prototypes, self.dim))
        self.reset_parameters()
        self.last_stats = {}

    def reset_parameters(self):
        """Random normal rows scaled to unit norm (as SwAV initialises its prototypes)."""
        with torch.no_grad():
            nn.init.normal_(self.prototypes)
            self.prototypes.copy_(normalize_rows(self.prototypes))

    @torch.no_grad()
    def _renormalize_prototypes(self):
        """Unit rows, in place and outside autograd, so dL/dC is the raw gradient (docs/method.md).

        Rows already unit-norm to rounding are left bitwise as they are, and the write does not
        bump the parameter's version counter: a second forward before the backward (two views,
        multi-crop, two clips summed into one loss) then changes nothing the first one saved.
        No host sync: the choice is made per row by torch.where.
        """
        c = self.prototypes
        w = c.to(rules.compute_dtype(c))
        sq = (w * w).sum(dim=1, keepdim=True)
        # rounding of a normalised row's squared norm stays below ~(D + 4) ulp
        tol = (c.shape[1] + 8) * torch.finfo(c.dtype).eps
        fresh = torch.where((sq - 1).abs() <= tol, w, normalize_rows(c))
        with torch.autograd._unsafe_preserve_version_counter(c):
            c.copy_(fresh)

    def extra_repr(self):
        return (f"num_prototypes={self.num_prototypes}, dim={self.dim}, epsilon={self.epsilon}, "
                f"sinkhorn_iterations={self.sinkhorn_iterations}, temperature={self.temperature}, "
                f"targets={self.targets!r}, backend={self.backend!r}, tol={self.tol}, streaming={self.streaming!r}")

    # --- input handling -------------------------------------------------------------------

    def _check_features(self, name, t):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in rules.FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.dim() not in (2, 3):
            raise ValueError(f"{name} must be (B, N, D) or flattened (M, D), got shape {tuple(t.shape)}")
        if t.shape[-1] != self.dim:
            raise ValueError(f"{name} has D={t.shape[-1]} features but the loss was built with dim={self.dim}")
        if t.device != self.prototypes.device:
            raise ValueError(f"{name} is on {t.device} but the prototypes are on {self.prototypes.device}")

    @staticmethod
    def _check_mask_counts(mask, n_per_sample):
        """Every sample must mask exactly n_per_sample tubes (a host sync only on CPU, where it is free;
        a device-side assert on accelerators and inside a compiled graph)."""
        counts = mask.sum(dim=1)
        if mask.device.type == "cpu" and not torch.compiler.is_compiling():
            bad = counts != n_per_sample
            if bool(bad.any()):
                raise ValueError(
                    f"mask selects {counts.tolist()} tubes per sample, but a (B, N_mask, D) input needs exactly "
                    f"N_mask={n_per_sample} in every sample; pass (B, N, D) inputs to allow unequal counts")
        else:
            torch._assert_async((counts == n_per_sample).all(),
                                f"mask must select N_mask={n_per_sample} tubes in every sample for a (B, N_mask, D) "
                                f"input; pass (B, N, D) inputs to allow unequal counts")

    def flatten_inputs(self, pred, target_feats, mask=None):
        """(M, D) rows of pred and target_feats, in the same token order.

        Without mask: both (M, D), or both (B, N, D) (all N tokens used). With a boolean mask
        (B, N) (True = masked, VideoMAE's `bool_masked_pos`): each input is either (B, N, D) —
        the masked rows are selected, unequal counts per sample allowed — or (B, N_mask, D), the
        masked tokens already gathered in row-major order (`x[mask].reshape(B, -1, D)`), which
        needs N_mask masked tubes in every sample.
        """
        self._check_features("pred", pred)
        self._check_features("target_feats", target_feats)
        if mask is None:
            if pred.shape != target_feats.shape:
                raise ValueError(f"pred {tuple(pred.shape)} and target_feats {tuple(target_feats.shape)} must have "
                                 f"the same shape when no mask is given")
            zv, zp = pred.reshape(-1, self.dim), target_feats.reshape(-1, self.dim)
        else:
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"mask must be a boolean torch.Tensor (B, N), got {type(mask).__name__}")
            if mask.dtype != torch.bool:
                raise TypeError(f"mask must be a boolean tensor (True = masked tube), got {mask.dtype}")
            if mask.dim() != 2:
                raise ValueError(f"mask must be (B, N), got shape {tuple(mask.shape)}")
            if mask.device != pred.device:
                raise ValueError(f"mask is on {mask.device} but pred is on {pred.device}")
            b, n = mask.shape
            for name, t in (("pred", pred), ("target_feats", target_feats)):
                if t.dim() != 3 or t.shape[0] != b:
                    raise ValueError(f"with a mask of shape {(b, n)}, {name} must be (B, N, D) or (B, N_mask, D) "
                                     f"with B={b}, got {tuple(t.shape)}")
            gathered = [t.shape[1] for t in (pred, target_feats) if t.shape[1] != n]
            if len(set(gathered)) > 1:
                raise ValueError(f"pred {tuple(pred.shape)} and target_feats {tuple(target_feats.shape)} hold "
                                 f"different numbers of masked tubes")
            if gathered:
                self._check_mask_counts(mask, gathered[0])
            zv, zp = (t[mask] if t.shape[1] == n else t.reshape(-1, self.dim) for t in (pred, target_feats))
            _require(zv.shape[0] == zp.shape[0],
                     f"pred gives {zv.shape[0]} masked tokens but target_feats gives {zp.shape[0]}")
            _require(zv.shape[0] <= b * n, "more masked tokens than tubes")  # a bound for torch.compile
        _require(zv.shape[0] > 0, "no tokens to train on: the mask has no True entry (or the inputs are empty)")
        return zv, zp

    # --- the objective ----------------------------------------------------------------------

    def _use_streaming(self, m, device):
        if self.streaming == "auto":
            kind = "cpu" if device.type == "cpu" else "cuda"
            budget = self.score_memory_budget if self.score_memory_budget is not None \
                else self.SCORE_MEMORY_BUDGET[kind]
            # Under torch.compile with a (B, N) mask, M is known only at run time: the graph then
            # streams unless even B·N tokens stay within the budget (never storing too much).
            return guard_or_true(m * self.num_prototypes * self.STORED_BYTES_PER_SCORE[kind] > budget)
        return self.streaming

    def _solve(self, z, streaming, group, m_global):
        """Sinkhorn (no grad) of one branch: (SinkhornResult, scores (M, K) or None)."""
        c = self.prototypes.detach()
        kwargs = dict(tol=self.tol, check_every=self.check_every, backend=self.backend)
        if streaming:
            if group is None:
                res = sinkhorn_streaming(z, c, self.epsilon, self.sinkhorn_iterations, **kwargs)
            else:
                res = sinkhorn_streaming_distributed(z, c, self.epsilon, self.sinkhorn_iterations,
                                                     process_group=group, global_rows=m_global, **kwargs)
            return res, None
        with torch.no_grad():
            scores = prototype_scores(z.detach(), c)
        if group is None:
            res = sinkhorn_solve(scores, self.epsilon, self.sinkhorn_iterations, **kwargs)
        else:
            res = sinkhorn_solve_distributed(scores, self.epsilon, self.sinkhorn_iterations, process_group=group,
                                             global_rows=m_global, **kwargs)
        return res, scores

    def forward(self, pred, target_feats, mask=None, *, return_stats=False):
        """SIGMA loss L = CE(S_v/τ, target(Q_p)) + CE(S_p/τ, target(Q_v)) (docs/method.md), a 0-d tensor.

        pred: video-model predictions, target_feats: projection-network features; (B, N, D) with
        an optional bool mask (B, N) (True = masked), (B, N_mask, D), or (M, D) — see
        `flatten_inputs`. Any float dtype; computed in float32 (float64 stays float64), with
        autocast disabled inside. Gradients: the first term reaches pred only (prototypes
        detached), the second reaches target_feats and the prototypes.
        With return_stats=True returns (loss, stats) where stats is also kept in `last_stats`.
        """
        zv, zp = self.flatten_inputs(pred, target_feats, mask)
        with torch.autocast(device_type=zv.device.type, enabled=False):
            self._renormalize_prototypes()
            w = world_size(self.process_group)
            group = (self.process_group if self.process_group is not None else torch.distributed.group.WORLD) \
                if w > 1 else None
            m = zv.shape[0]
            m_global = global_count(m, zv.device, group) if group is not None else m
            streaming = self._use_streaming(m, zv.device)
            want_stats = self.compute_stats or rules.check_flag("return_stats", return_stats)
            # One branch at a time, so at most one stored M×K score matrix is alive.
            c = self.prototypes
            reduction = "mean" if group is None else "sum"
            if self.targets == "soft" and (not streaming or has_fused_swapped_products(
                    zv.device, rules.compute_dtype(zv, zp, c), backend=self.backend)):
                loss_v, loss_p, stats_v, stats_p = self._swapped_soft_terms(zv, zp, streaming, group, m_global,
                                                                            want_stats, reduction)
            elif not streaming:
                # Stored scores, hard targets: each branch leaves only its labels (the other term's
                # targets) and its own softmax products (LSE, P·C, and Pᵀ·normalize(z_p) for the
                # prototypes' gradient), all from the scores in memory. Neither cross-entropy then
                # touches an M×K matrix, forward or backward: 5 M×K×D products in all
                # (docs/performance.md).
                stats_v, prod_v, labels_v = self._stored_branch(zv, group, m_global, want_stats, own_grad=False)
                stats_p, prod_p, labels_p = self._stored_branch(zp, group, m_global, want_stats, own_grad=True)
                # Video-model term: prototypes detached, targets from Q_p; projection term: live
                # prototypes, targets from Q_v.
                loss_v = prototype_cross_entropy_from_products(zv, c.detach(), labels_p, prod_v, self.temperature,
                                                               reduction=reduction)
                loss_p = prototype_cross_entropy_from_products(zp, c, labels_v, prod_p, self.temperature,
                                                               reduction=reduction)
            else:
                res_v, labels_v, stats_v = self._branch(zv, group, m_global, want_stats)
                res_p, labels_p, stats_p = self._branch(zp, group, m_global, want_stats)
                if self.targets == "hard":
                    # Labels once per branch (one pass), then the fused CE: cheaper than recomputing
                    # the other branch's score tiles in both the forward and the backward.
                    kw = dict(reduction=reduction, backend=self.backend)
                    # Video-model term: the prototypes are detached (docs/method.md), targets from Q_p.
                    loss_v = prototype_cross_entropy(zv, c.detach(), labels_p, self.temperature, **kw)
                    # Projection term: live prototypes, targets from Q_v.
                    loss_p = prototype_cross_entropy(zp, c, labels_v, self.temperature, **kw)
                else:  # soft targets, recomputed tile by tile from the other branch's potentials, per term
                    kw = dict(targets=self.targets, reduction=reduction, backend=self.backend)
                    loss_v = prototype_cross_entropy_sinkhorn(zv, c.detach(), zp, c, res_p.v, self.epsilon,
                                                              self.temperature, **kw)
                    loss_p = prototype_cross_entropy_sinkhorn(zp, c, zv, c, res_v.v, self.epsilon,
                                                              self.temperature, **kw)
            if group is not None:
                scale = w / m_global
                loss_v, loss_p = loss_v * scale, loss_p * scale
            loss = loss_v + loss_p

            stats = None
            if want_stats:
                stats = {"loss_v": loss_v.detach(), "loss_p": loss_p.detach()}
                stats.update({f"{key}_v": value for key, value in stats_v.items()})
                stats.update({f"{key}_p": value for key, value in stats_p.items()})
                self.last_stats = stats
        return (loss, stats) if return_stats else loss

    def _labels_and_stats(self, z, res, scores, group, m_global, want_stats):
        """Hard labels argmax_k Q_ik (targets="hard") and the diagnostics (want_stats), from one
        pass over the stored scores (scores) or over recomputed tiles (scores None)."""
        labels = stats = None
        if self.targets == "hard" or want_stats:
            # one pass over the scores gives the labels and, for the diagnostics, the row entropies
            kw = dict(return_entropy=want_stats, backend=self.backend)
            if scores is not None:
                out = sinkhorn_assign_from_potentials(scores, res.v, self.epsilon, **kw)
            else:
                out = sinkhorn_assign_from_potentials_streaming(z, self.prototypes, res.v, self.epsilon, **kw)
            labels = out[0] if want_stats else out
            if want_stats:
                stats = self._stats(labels, out[1], res, group, m_global)
        return (labels if self.targets == "hard" else None), stats

    def _stats(self, labels, entropy_sum, res, group, m_global):
        stats = assignment_stats(labels, entropy_sum, self.num_prototypes, m_global=m_global, process_group=group)
        stats["marginal_error"] = res.marginal_error
        return stats

    @torch.no_grad()
    def _branch(self, z, group, m_global, want_stats):
        """Streaming Sinkhorn of one branch: (SinkhornResult, hard labels or None, diagnostics or None)."""
        res, scores = self._solve(z, True, group, m_global)
        return (res, *self._labels_and_stats(z, res, scores, group, m_global, want_stats))

    @torch.no_grad()
    def _stored_branch(self, z, group, m_global, want_stats, own_grad):
        """Sinkhorn of one branch on stored scores (hard targets), and all that the two
        cross-entropies need of those scores: (diagnostics or None, the branch's SoftmaxProducts at
        τ (p_x when own_grad), its hard labels). The scores are dropped on return."""
        res, scores = self._solve(z, False, group, m_global)
        labels, stats = self._labels_and_stats(z, res, scores, group, m_global, want_stats)
        prod = prototype_softmax_products(scores, self.prototypes, self.temperature, z=z if own_grad else None,
                                          backend=self.backend)
        return stats, prod, labels

    def _swapped_soft_terms(self, zv, zp, streaming, group, m_global, want_stats, reduction):
        """Both cross-entropies with soft targets from one swapped pass: (loss_v, loss_p, stats_v, stats_p).

        Each term's gradient needs P − Q' with Q' from the other branch, so both branches' rows are
        needed at once (prototype_swapped_products). Stored: the projection's scores stay stored
        after its solve, the video model's are dropped after its own and recomputed in row chunks;
        6 M×K×D products in all (2 for the solves' scores, 1 recomputation, 3 gradient products)
        and at most two M×K matrices alive at a time, as with hard targets (docs/performance.md).
        Streaming: both branches' scores are recomputed tile by tile, nothing M×K is stored
        (docs/streaming.md)."""
        c = self.prototypes
        with torch.no_grad():
            res_v = self._solve(zv, streaming, group, m_global)[0]  # stored: its scores are freed here
            res_p, scores_p = self._solve(zp, streaming, group, m_global)  # scores_p None when streaming
            prods = prototype_swapped_products(scores_p, zv, c, res_p.v, res_v.v, self.epsilon, self.temperature,
                                               z_a=zp, return_labels=want_stats, backend=self.backend)
            del scores_p
        # Projection term (a): P_p against Q_v, live prototypes; video-model term (b): P_v against
        # Q_p, prototypes detached.
        loss_p = prototype_cross_entropy_from_products(zp, c, None, prods.a, self.temperature, reduction=reduction)
        loss_v = prototype_cross_entropy_from_products(zv, c.detach(), None, prods.b, self.temperature,
                                                       reduction=reduction)
        stats_v = stats_p = None
        if want_stats:
            stats_p = self._stats(prods.labels[0], prods.entropy[0], res_p, group, m_global)
            stats_v = self._stats(prods.labels[1], prods.entropy[1], res_v, group, m_global)
        return loss_v, loss_p, stats_v, stats_p
