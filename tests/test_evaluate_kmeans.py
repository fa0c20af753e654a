"""sigma.evaluate.kmeans against scikit-learn's KMeans, and the exact token-span projection of `segment`."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sigma.evaluate.kmeans import _means, kmeans
from sigma.evaluate.segmentation import resize_features, segment_clip, token_span

sklearn_cluster = pytest.importorskip("sklearn.cluster")


def _sklearn(points, k, seed=0, n_init=10):
    km = sklearn_cluster.KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(np.asarray(points, np.float64))
    return km.labels_, km.inertia_


def _same_partition(a, b):
    """Whether two label vectors split the points alike (equal up to renaming the clusters)."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _blobs(k, d, per, spread, seed):
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(k, d, generator=g, dtype=torch.float64)
    return (centres[:, None] + spread * torch.randn(k, per, d, generator=g, dtype=torch.float64)).reshape(-1, d)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 7), d=st.integers(1, 40), per=st.integers(3, 60), spread=st.sampled_from([0.05, 2.0, 8.0]),
       seed=st.integers(0, 2**16))
def test_same_clustering_as_scikit_learn_for_the_same_seed(k, d, per, spread, seed):
    """The same draws from RandomState(seed) and the same steps: scikit-learn's partition, from
    well-separated blobs (spread 0.05) to overlapping ones (8), with its inertia."""
    x = _blobs(k, d, per, spread, seed)
    labels, centres, inertia = kmeans(x, k, seed=seed)
    want, want_inertia = _sklearn(x, k, seed)
    assert _same_partition(labels.numpy(), want)
    assert inertia == pytest.approx(want_inertia, rel=1e-9, abs=1e-9)
    assert centres.shape == (k, d)


@pytest.mark.parametrize("seed", range(4))
def test_float32_points_give_scikit_learns_clustering_of_float64(seed):
    """segment's points are float32 (Lloyd runs in float32): the partitions still agree."""
    x = _blobs(6, 16, 200, 6.0, seed)
    for k in (3, 6, 9):
        labels, _, inertia = kmeans(x.float(), k, seed=seed)
        want, want_inertia = _sklearn(x, k, seed)
        assert _same_partition(labels.numpy(), want)
        assert inertia == pytest.approx(want_inertia, rel=1e-5)


def test_result_is_a_lloyd_fixed_point():
    """Every point sits with its nearest centre, and each centre is its cluster's mean."""
    x = _blobs(5, 8, 100, 4.0, 1)
    labels, centres, inertia = kmeans(x, 5, seed=3)
    d = torch.cdist(x, centres)
    assert torch.equal(labels, d.argmin(1))
    for c in range(5):
        assert torch.allclose(centres[c], x[labels == c].mean(0), atol=1e-8)
    assert inertia == pytest.approx(float((d.min(1).values ** 2).sum()), rel=1e-9)


def test_seed_decides_the_result():
    x = _blobs(6, 4, 50, 8.0, 0).float()
    a, b = kmeans(x, 6, seed=1, n_init=1), kmeans(x, 6, seed=1, n_init=1)
    assert torch.equal(a[0], b[0])
    inertias = {round(kmeans(x, 6, seed=s, n_init=1)[2], 3) for s in range(12)}
    assert len(inertias) > 1  # a single restart does depend on the seed


def test_identical_points_and_k_equal_to_the_point_count():
    labels, centres, inertia = kmeans(torch.ones(50, 3), 4)
    assert inertia == 0 and torch.isfinite(centres).all()
    assert len(labels.unique()) == 1
    x = torch.randn(5, 2)
    labels, _, inertia = kmeans(x, np.int64(5))  # every point alone; a NumPy integer is an integer
    assert sorted(labels.tolist()) == list(range(5)) and inertia == pytest.approx(0, abs=1e-10)


@pytest.mark.parametrize("implementation", ["torch", "sklearn"])
@pytest.mark.parametrize("points, k, match", [
    (torch.randn(5, 2), 6, r"k: expected an integer with 1 <= k <= 5 \(the number of points\), got 6"),
    (torch.randn(5, 2), 0, r"k: expected an integer with 1 <= k <= 5"),
    (torch.randn(5, 2), 2.7, r"k: expected an integer, got 2.7"),
    (torch.randn(5, 2), True, r"k: expected an integer, got True"),
    (torch.zeros(0, 2), 1, r"points: expected a 2-D \(P, D\) array .* got shape \(0, 2\)"),
    (torch.zeros(5, 0), 1, r"points: .* at least one row and one feature, got shape \(5, 0\)"),
    (torch.zeros(5), 1, r"points: expected a 2-D"),
    (torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [2.0, float("inf")]]), 2,
     r"points: expected finite values, got NaN or Inf in 2 of 3 rows"),
])
def test_bad_points_and_k_are_clear_errors(points, k, match, implementation):
    """As scikit-learn, not silently: NaN put every point in one cluster (inertia nan), k was
    clamped to the point count and truncated (2.7 -> 2), zero features were clustered."""
    from sigma.evaluate.segmentation import kmeans_labels

    with pytest.raises(ValueError, match=match):
        kmeans(points, k)
    with pytest.raises(ValueError, match=match):
        kmeans_labels(points, k, implementation=implementation, n_init=1)
    with pytest.raises(ValueError, match="n_init: expected an integer >= 1, got 0"):
        kmeans(torch.randn(5, 2), 2, n_init=0)


def test_empty_cluster_takes_the_farthest_point():
    x = torch.tensor([[0.0], [1.0], [10.0]])
    centres = torch.tensor([[[0.5], [100.0]]])  # cluster 1 gets no point
    labels = torch.tensor([[0, 0, 0]])
    new = _means(x, labels, centres)
    # the point farthest from its centre (10, at 9.5) moves to cluster 1; cluster 0 keeps 0 and 1
    assert torch.allclose(new, torch.tensor([[[0.5], [10.0]]]))


def test_token_span_keeps_every_distance_after_resizing():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 4, 4, 48, generator=g, dtype=torch.float64)  # 32 tokens narrower than 48 features
    p = token_span(f)
    assert p.shape == (2, 4, 4, 32)
    a = resize_features(f, 28).double().reshape(-1, 48)
    b = resize_features(p, 28).double().reshape(-1, 32)
    assert torch.allclose(torch.cdist(a[::7], a[::5]), torch.cdist(b[::7], b[::5]), atol=1e-4)
    assert torch.allclose(a.norm(dim=1), b.norm(dim=1), atol=1e-4)
    wide = torch.randn(2, 4, 4, 8)
    assert token_span(wide) is wide  # as many tokens as features: nothing to gain


def test_segment_scores_equal_with_and_without_the_projection():
    """scikit-learn on the projected points (tol scaled) finds what it finds on the full features."""
    import sigma.evaluate.segmentation as seg

    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 4, 4, 96, generator=g)
    masks = np.zeros((4, 32, 32), dtype=np.int64)
    masks[:, 8:24, 4:20] = 1
    masks[:, 2:10, 20:30] = 2
    projected = segment_clip(feats, masks, kmeans="sklearn", n_init=3)
    orig = seg.token_span
    try:
        seg.token_span = lambda f: f  # the unprojected computation
        full = segment_clip(feats, masks, kmeans="sklearn", n_init=3)
    finally:
        seg.token_span = orig
    for key in ("miou_clustering", "miou_overclustering"):
        assert projected[key] == pytest.approx(full[key], abs=1e-9)
