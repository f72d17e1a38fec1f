"""Each loss against the paper formula evaluated by hand with plain python math."""
import math

import pytest
import torch

from genrefusion.fusion.losses import create_loss, list_losses, pos_weight_from_labels

LOGITS = [[0.5, -1.0, 3.0], [2.0, 0.0, -4.0]]
TARGETS = [[1, 0, 0], [0, 1, 0]]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def cells():
    for row_x, row_y in zip(LOGITS, TARGETS):
        for x, y in zip(row_x, row_y):
            yield x, y, sigmoid(x)


def run(loss, logits=LOGITS, targets=TARGETS):
    return loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64)).item()


def test_registry():
    assert list_losses() == ["bce", "bce-posweight", "focal", "asl"]
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("hinge")


def test_bce():
    expected = sum(-(y * math.log(p) + (1 - y) * math.log(1 - p)) for _, y, p in cells()) / 6
    assert run(create_loss("bce")) == pytest.approx(expected, rel=1e-9)


def test_pos_weight_from_labels():
    labels = [[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 1]]
    # genre 0: 2 neg / 2 pos; genre 1: no positives -> 4 neg / clamp(0 -> 1); genre 2: 1 neg / 3 pos
    torch.testing.assert_close(pos_weight_from_labels(labels), torch.tensor([1.0, 4.0, 1 / 3]))
    with pytest.raises(ValueError, match="0/1"):
        pos_weight_from_labels([[2, 0]])
    with pytest.raises(ValueError, match="shape"):
        pos_weight_from_labels([1, 0, 1])


def test_bce_posweight():
    w = [2.0, 4.0, 0.5]
    expected = 0.0
    for i, row_x in enumerate(LOGITS):
        for j, x in enumerate(row_x):
            y, p = TARGETS[i][j], sigmoid(x)
            expected += -(w[j] * y * math.log(p) + (1 - y) * math.log(1 - p))
    loss = create_loss("bce-posweight", pos_weight=torch.tensor(w))
    assert run(loss.double()) == pytest.approx(expected / 6, rel=1e-6)
    # weights are a buffer, so they follow the module to another device / dtype
    assert "pos_weight" in dict(loss.named_buffers())
    # zero-positive genre from pos_weight_from_labels still gives a finite loss
    pw = pos_weight_from_labels([[1, 0, 0], [0, 0, 1]])
    assert math.isfinite(run(create_loss("bce-posweight", pos_weight=pw).double()))


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal(alpha):
    gamma = 2.0
    expected = 0.0
    for _, y, p in cells():
        p_t = p if y == 1 else 1 - p
        a_t = 1.0 if alpha is None else (alpha if y == 1 else 1 - alpha)
        expected += -a_t * (1 - p_t) ** gamma * math.log(p_t)
    assert run(create_loss("focal", alpha=alpha)) == pytest.approx(expected / 6, rel=1e-9)


def test_asl():
    g_neg, g_pos, clip = 4.0, 1.0, 0.05
    expected = 0.0
    for _, y, p in cells():
        if y == 1:
            expected += -((1 - p) ** g_pos) * math.log(p)
        else:
            p_m = max(p - clip, 0.0)  # shifted probability: very easy negatives contribute nothing
            expected += -(p_m**g_neg) * math.log(1 - p_m)
    assert run(create_loss("asl")) == pytest.approx(expected / 6, rel=1e-9)
    # a negative whose probability is below the clip has exactly zero loss
    assert run(create_loss("asl"), [[-4.0]], [[0]]) == 0.0  # sigmoid(-4) = 0.018 < 0.05


def test_focal_and_asl_reduce_to_bce():
    """With focusing off (gamma 0) and no clip, both are plain BCE: a check that the pieces line up."""
    bce = run(create_loss("bce"))
    assert run(create_loss("focal", gamma=0.0)) == pytest.approx(bce, rel=1e-9)
    assert run(create_loss("asl", gamma_neg=0.0, gamma_pos=0.0, clip=0.0)) == pytest.approx(bce, rel=1e-9)


@pytest.mark.parametrize("name", ["bce", "bce-posweight", "focal", "asl"])
def test_gradients_finite_and_pointing_right(name):
    pw = torch.ones(3) if name == "bce-posweight" else None
    logits = torch.tensor([[-10.0, 0.3, 10.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 1.0, 0.0]])
    create_loss(name, pos_weight=pw)(logits, targets).backward()
    g = logits.grad[0]
    assert torch.isfinite(g).all()
    # descending the loss raises the logits of positives and lowers those of negatives
    assert g[0] < 0 and g[1] < 0 and g[2] > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs pos_weight"):
        create_loss("bce-posweight")
    with pytest.raises(ValueError, match="takes no pos_weight"):
        create_loss("focal", pos_weight=torch.ones(3))
    with pytest.raises(ValueError, match="finite"):
        create_loss("bce-posweight", pos_weight=torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="shape"):
        create_loss("asl")(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="alpha"):
        create_loss("focal", alpha=2.0)
