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


@pytest.mark.parametrize("weighted", [True, False])
def test_knn_scores_match_float64_bruteforce(weighted):
    g = torch.Generator().manual_seed(2)
    tr, te = torch.randn(50, 8, generator=g), torch.randn(13, 8, generator=g)
    ytr = torch.randint(0, 4, (50,), generator=g)
    got = knn_scores(tr, ytr, te, 4, k=5, temperature=0.1, weighted=weighted, chunk_size=4)
    a = tr.double().numpy() / np.linalg.norm(tr.double().numpy(), axis=1, keepdims=True)
    b = te.double().numpy() / np.linalg.norm(te.double().numpy(), axis=1, keepdims=True)
    want = np.zeros((13, 4))
    for i in range(13):
        sim = a @ b[i]
        for j in np.argsort(-sim)[:5]:
            want[i, ytr[j]] += np.exp(sim[j] / 0.1) if weighted else 1.0
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4)


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
