"""k-NN / linear probe / accuracy metrics on feature tensors (known answers, independent checks)."""
import numpy as np
import pytest
import torch

from sigma.evaluate.metrics import (
    classification_metrics,
    knn_evaluate,
    knn_scores,
    linear_probe_scores,
    train_linear_probe,
)

sk_metrics = pytest.importorskip("sklearn.metrics")


def _label_features(labels, num_classes, dim=32, noise=0.05, seed=0):
    """Features that encode the label: a fixed random direction per class plus small noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    return centres[labels] + noise * torch.randn(len(labels), dim, generator=g)


def test_accuracies_match_sklearn():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(300, 7, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    out = classification_metrics(scores, labels)
    assert out["top1"] == pytest.approx(100 * sk_metrics.accuracy_score(labels, scores.argmax(1)))
    assert out["top5"] == pytest.approx(100 * sk_metrics.top_k_accuracy_score(labels, scores, k=5,
                                                                               labels=range(7)))
    assert out["mean_class_accuracy"] == pytest.approx(
        100 * sk_metrics.balanced_accuracy_score(labels, scores.argmax(1)))


def test_unknown_labels_are_a_clear_error():
    with pytest.raises(ValueError, match="outside the 3 known classes"):
        classification_metrics(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="unlabelled"):
        classification_metrics(torch.randn(2, 3), torch.tensor([0, -1]))


@pytest.mark.parametrize("weighted,temperature", [(True, 0.1), (False, 0.1), (True, 0.005)])
def test_knn_scores_match_float64_bruteforce(weighted, temperature):
    """Votes exp(sim / T), normalised over each clip's k neighbours; T = 0.005 puts exp(sim / T) past
    float32's range (e^200), which float64 still holds."""
    g = torch.Generator().manual_seed(2)
    tr, te = torch.randn(50, 8, generator=g), torch.randn(13, 8, generator=g)
    ytr = torch.randint(0, 4, (50,), generator=g)
    got = knn_scores(tr, ytr, te, 4, k=5, temperature=temperature, weighted=weighted, chunk_size=4)
    a = tr.double().numpy() / np.linalg.norm(tr.double().numpy(), axis=1, keepdims=True)
    b = te.double().numpy() / np.linalg.norm(te.double().numpy(), axis=1, keepdims=True)
    want = np.zeros((13, 4))
    for i in range(13):
        sim = a @ b[i]
        near = np.argsort(-sim)[:5]
        w = np.exp(sim[near] / temperature) if weighted else np.ones(5)
        for j, wj in zip(near, w / w.sum() if weighted else w):
            want[i, ytr[j]] += wj
    assert np.isfinite(want).all() and (weighted or want.sum(1).tolist() == [5.0] * 13)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-6)


def test_knn_settings_are_checked_and_k_capped_with_a_warning():
    g = torch.Generator().manual_seed(3)
    tr, te, ytr = torch.randn(6, 8, generator=g), torch.randn(4, 8, generator=g), torch.arange(6) % 3
    for t in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            knn_scores(tr, ytr, te, 3, temperature=t)
    knn_scores(tr, ytr, te, 3, k=3, temperature=0.0, weighted=False)  # no weights: T is not used
    with pytest.warns(UserWarning, match="k=20 exceeds the 6 training clips; using k=6"):
        capped = knn_scores(tr, ytr, te, 3, k=20)
    torch.testing.assert_close(capped, knn_scores(tr, ytr, te, 3, k=6), rtol=0, atol=0)
    with pytest.warns(UserWarning):
        assert knn_evaluate(tr, ytr, te, ytr[:4], 3, k=20)["k"] == 6


def test_non_finite_features_are_a_clear_error():
    tr, ytr = torch.randn(6, 8), torch.arange(6) % 3
    bad = tr.clone()
    bad[4, 2] = float("nan")
    with pytest.raises(ValueError, match=r"train_feats: 1 of 6 rows are not finite \(NaN or inf; first: row 4\)"):
        knn_scores(bad, ytr, tr, 3)
    with pytest.raises(ValueError, match="test_feats: 6 of 6 rows are not finite"):
        knn_evaluate(tr, ytr, torch.full((6, 8), float("inf")), ytr, 3)
    with pytest.raises(ValueError, match="train_feats: 1 of 6 rows are not finite"):
        train_linear_probe(bad, ytr, 3, epochs=1)


def test_knn_label_features_perfect_and_shuffled_chance():
    c = 10
    ytr, yte = torch.arange(2000) % c, torch.arange(1000) % c
    feats = _label_features(torch.cat([ytr, yte]), c)
    out = knn_evaluate(feats[:2000], ytr, feats[2000:], yte, c, k=10)
    assert out["top1"] == 100.0 and out["mean_class_accuracy"] == 100.0
    shuffled = ytr[torch.randperm(2000, generator=torch.Generator().manual_seed(0))]
    out = knn_evaluate(feats[:2000], shuffled, feats[2000:], yte, c, k=10)
    assert 4.0 < out["top1"] < 16.0  # chance is 10% (std of the estimate ~1%)
    assert 35.0 < out["top5"] < 65.0  # chance is 50%


def test_linear_probe_label_features_perfect_and_shuffled_chance():
    c = 10
    ytr, yte = torch.arange(1000) % c, torch.arange(1000) % c
    feats = _label_features(torch.cat([ytr, yte]), c, noise=0.3)
    probe, hist = train_linear_probe(feats[:1000], ytr, c, epochs=30, batch_size=128, lr=1e-2)
    assert hist["loss"][-1] < hist["loss"][0]
    out = classification_metrics(linear_probe_scores(probe, feats[1000:]), yte)
    assert out["top1"] == 100.0
    # random features and random labels: nothing to learn, test accuracy at chance
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 32, generator=g)
    y = torch.randint(0, c, (2000,), generator=g)
    probe, _ = train_linear_probe(x[:1000], y[:1000], c, epochs=30, batch_size=128, lr=1e-2)
    out = classification_metrics(linear_probe_scores(probe, x[1000:]), y[1000:])
    assert 4.0 < out["top1"] < 16.0


def test_linear_probe_is_deterministic_for_a_seed():
    x, y = torch.randn(100, 6), torch.arange(100) % 3
    p1, _ = train_linear_probe(x, y, 3, epochs=3, seed=5)
    p2, _ = train_linear_probe(x, y, 3, epochs=3, seed=5)
    assert torch.equal(p1.head.weight, p2.head.weight)
