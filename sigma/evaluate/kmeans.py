"""k-means for the evaluation tasks: scikit-learn's algorithm in PyTorch, every restart at once.

The algorithm is scikit-learn's `KMeans(algorithm="lloyd")`, step for step: the data are centred;
each restart is seeded by greedy k-means++ (first centre uniform, then 2 + ⌊ln k⌋ candidates drawn
∝ D², keeping the one that lowers the potential most); Lloyd iterations stop when no label changes
or when the squared centre shift, summed over clusters, is at most `tol` × the mean per-feature
variance of the data, after at most `max_iter`; a cluster left empty takes the point farthest from
its centre; the restart with the lowest inertia wins. Even the random numbers are scikit-learn's:
the same uniform draws from `numpy.random.RandomState(seed)`, in the same order, so for a seed it
finds scikit-learn's clustering, up to float rounding (k-means++ runs in float64, Lloyd in float32
for float32 points; tests compare the two). Rounding matters where the data have many exact ties
(repeated points, equal distances): a tie broken the other way can end in another partition of
equal or nearly equal inertia (5 of 240 such fits in a check).

Why not scikit-learn: `segment` runs two k-means of ten restarts on each of its clips, a few
thousand points each; scikit-learn runs the restarts one after another, each a chain of small
BLAS and Cython calls, while here each Lloyd step of all running restarts is one matrix product
(R·k, D) @ (D, P) and one min over k. On the README's synthetic val clips (3136 points of 64
dimensions, k = 3 and 6) that is about 30 ms per fit against scikit-learn's 65 ms on one core,
and `segment` no longer imports scikit-learn (about 1.7 s).
"""
import operator

import numpy as np
import torch


def kmeans(points, k, *, seed=0, n_init=10, max_iter=300, tol=1e-4):
    """Cluster the rows of points (P, D). Returns (labels int64 (P,), centres (k, D) in the points'
    coordinates, inertia: the summed squared distance of the points to their centres), of the best
    of `n_init` restarts. Computes in float32 (float64 for float64 points; the inertia always)."""
    x = torch.as_tensor(points)
    k = check_kmeans_inputs(x, k, n_init)
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    mean = x.mean(0)
    x = x - mean  # as scikit-learn: fewer digits lost in |x|² - 2 x·c + |c|²
    threads = torch.get_num_threads()
    # One thread: hundreds of small ops per fit, where a second thread gains little and, on a
    # loaded machine, spins; the result does not depend on the thread count.
    torch.set_num_threads(1)
    try:
        centres = _kmeans_plusplus(x, k, n_init, int(seed))
        labels, centres, inertia = _lloyd(x, centres, max_iter, tol * float(x.var(0, unbiased=False).mean()))
    finally:
        torch.set_num_threads(threads)
    best = int(inertia.argmin())  # the first of equal inertias, as scikit-learn keeps the first
    return labels[best], centres[best] + mean, float(inertia[best])


def check_kmeans_inputs(points, k, n_init=1):
    """Raise ValueError unless points is a finite (P, D) tensor with P, D >= 1 and k, n_init are
    integers with 1 <= k <= P, n_init >= 1 (scikit-learn's rules: a NaN would put every point in
    one cluster with inertia nan, a k above P or a fractional k would silently cluster otherwise).
    Returns k as an int. One host sync (the finiteness check)."""
    if points.dim() != 2 or points.shape[0] < 1 or points.shape[1] < 1:
        raise ValueError(f"points: expected a 2-D (P, D) array with at least one row and one feature, "
                         f"got shape {tuple(points.shape)}")
    k, n_init = _integer("k", k), _integer("n_init", n_init)
    if not 1 <= k <= points.shape[0]:
        raise ValueError(f"k: expected an integer with 1 <= k <= {points.shape[0]} (the number of points), got {k}")
    if n_init < 1:
        raise ValueError(f"n_init: expected an integer >= 1, got {n_init}")
    if (points.is_floating_point() or points.is_complex()) and not bool(torch.isfinite(points).all()):
        bad = int((~torch.isfinite(points)).any(1).sum())
        raise ValueError(f"points: expected finite values, got NaN or Inf in {bad} of {points.shape[0]} rows")
    return k


def _integer(name, value):
    """value as an int if it is an integer (Python, NumPy or a 0-d integer tensor), else ValueError:
    int(2.7) would quietly cluster with k = 2."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None


def _scores(x, centres):
    """|c|² - 2 c·x (R, k, P) of x (P, D) and centres (R, k, D): the squared distance less |x|²,
    which does not change which centre is nearest. Laid out (R, k, P) so that the matrix product
    and the min over k run along contiguous points (4-8× faster on a CPU than (R, P, k))."""
    r, k, d = centres.shape
    flat = centres.reshape(r * k, d)
    cc = (flat * flat).sum(1, keepdim=True)
    return torch.addmm(cc, flat, x.T, alpha=-2).view(r, k, -1)


def _sklearn_draws(seed, restarts, k, p):
    """The uniform draws scikit-learn's k-means++ takes from `RandomState(seed)`, in its order: per
    restart the first centre's index (`choice` with equal weights), then k - 1 times 2 + ⌊ln k⌋
    numbers in [0, 1). Returns (first int64 (R,), u float64 (R, k - 1, trials))."""
    rs = np.random.RandomState(seed)
    trials = 2 + int(np.log(k))
    weights = np.ones(p)
    first, u = [], []
    for _ in range(restarts):
        first.append(rs.choice(p, p=weights / weights.sum()))
        u.append([rs.uniform(size=trials) for _ in range(k - 1)])
    u = np.array(u, dtype=np.float64).reshape(restarts, k - 1, trials)
    return torch.as_tensor(np.array(first), dtype=torch.int64), torch.from_numpy(u)


def _kmeans_plusplus(x, k, restarts, seed):
    """Greedy k-means++ seeds of every restart: (R, k, D), in float64 (candidates are compared by
    their potentials, which float32 would round into ties)."""
    p = x.shape[0]
    x64 = x.double()
    xx = (x64 * x64).sum(1)
    first, u = _sklearn_draws(seed, restarts, k, p)
    rows = torch.arange(restarts)
    centres = [first]  # point indices, each (R,)
    closest = (_scores(x64, x64[first][:, None])[:, 0] + xx).clamp_min_(0)  # (R, P) squared distances
    for c in range(1, k):
        pot = closest.sum(1, keepdim=True)  # (R, 1)
        cand = torch.searchsorted(closest.cumsum(1), u[:, c - 1] * pot).clamp_(max=p - 1)  # (R, trials)
        d = (_scores(x64, x64[cand]) + xx).clamp_min_(0)  # (R, trials, P)
        d = torch.minimum(d, closest[:, None])
        best = d.sum(2).argmin(1)  # (R,): the candidate that lowers the potential most
        closest = d[rows, best]
        centres.append(cand[rows, best])
    return x[torch.stack(centres, 1)]


def _lloyd(x, centres, max_iter, tol):
    """Lloyd iterations of every restart from centres (R, k, D) until each has converged (its
    labels unchanged, or a squared centre shift <= tol): (labels (R, P), centres, inertia (R,)).
    Each iteration computes only the restarts still running."""
    r, k, _ = centres.shape
    centres = centres.clone()
    labels = torch.full((r, x.shape[0]), -1, dtype=torch.int64)
    run = torch.arange(r)
    for _ in range(max_iter):
        c = centres[run]
        new_labels = _scores(x, c).min(1).indices  # (r', P): the first of equal distances
        new_centres = _means(x, new_labels, c)
        step = new_centres - c
        shift = (step * step).sum((1, 2))
        same = (new_labels == labels[run]).all(1)
        centres[run] = new_centres
        labels[run] = new_labels
        run = run[~same & (shift > tol)]
        if not len(run):
            break
    # the labels of the final centres (scikit-learn's last E-step), and the inertia, in float64:
    # |x|² - 2 x·c + |c|² of tight clusters far from the mean loses its digits in float32, and the
    # inertia picks the restart
    x64 = x.double()
    best = _scores(x64, centres.double()).min(1)
    inertia = (best.values + (x64 * x64).sum(1)).clamp_min(0).sum(1)
    return best.indices, centres, inertia


def _means(x, labels, centres):
    """The mean of each cluster (R, k, D) for labels (R, P); an empty cluster takes the point
    farthest from its centre (scikit-learn's relocation), which leaves the cluster it came from."""
    r, k, _ = centres.shape
    onehot = (labels[:, None, :] == torch.arange(k)[:, None]).to(x.dtype)  # (R, k, P)
    counts = onehot.sum(2)  # (R, k)
    empty = counts == 0
    if empty.any():
        own = centres.gather(1, labels[..., None].expand(-1, -1, x.shape[1]))  # (R, P, D)
        far = ((x - own) ** 2).sum(-1)  # (R, P)
        for i in torch.nonzero(empty.any(1))[:, 0].tolist():
            ids = torch.nonzero(empty[i])[:, 0]
            moved = far[i].topk(len(ids)).indices
            onehot[i, :, moved] = 0
            onehot[i, ids, moved] = 1
        counts = onehot.sum(2)
    return (onehot @ x) / counts.clamp_min(1)[..., None]
