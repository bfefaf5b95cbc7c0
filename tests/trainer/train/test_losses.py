"""info_nce against hand-written references; gather_with_grad in one process."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.train.losses import gather_with_grad, info_nce, loss_scale


def _unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def _loop_reference(q, t, negs, tau):
    """-log softmax of the own target among all targets and all negatives, by explicit loops (floats)."""
    q, t = q.double().tolist(), t.double().tolist()
    cands = list(t)
    if negs is not None:
        for row in negs.double().tolist():
            cands.extend(row)
    total = 0.0
    for i, qi in enumerate(q):
        scores = [sum(a * b for a, b in zip(qi, c)) / tau for c in cands]
        m = max(scores)
        log_z = m + math.log(sum(math.exp(s - m) for s in scores))
        total += log_z - scores[i]
    return total / len(q)


@pytest.mark.parametrize("k", [None, 1, 3])
@pytest.mark.parametrize("tau", [0.02, 0.5, 1.0])
def test_info_nce_matches_loop_reference(k, tau):
    q, t = _unit(6, 8, seed=1), _unit(6, 8, seed=2)
    negs = None if k is None else _unit(6, k, 8, seed=3)
    got = info_nce(q, t, negs, temperature=tau)
    want = _loop_reference(q, t, negs, tau)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_info_nce_matches_cross_entropy_on_hand_built_logits():
    B, K, D, tau = 5, 2, 4, 0.1
    q, t, n = _unit(B, D, seed=4), _unit(B, D, seed=5), _unit(B, K, D, seed=6)
    logits = torch.empty(B, B + B * K)
    for i in range(B):
        for j in range(B):
            logits[i, j] = q[i] @ t[j] / tau
        for j in range(B):
            for kk in range(K):
                logits[i, B + j * K + kk] = q[i] @ n[j, kk] / tau
    want = F.cross_entropy(logits, torch.arange(B))
    torch.testing.assert_close(info_nce(q, t, n, temperature=tau), want, rtol=1e-6, atol=1e-6)


def test_negative_mask_leaves_padded_slots_out_of_every_querys_candidates():
    B, K, D, tau = 4, 3, 8, 0.1
    q, t, n = _unit(B, D, seed=11), _unit(B, D, seed=12), _unit(B, K, D, seed=13)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, True], [True, True, True]])
    kept = n.reshape(-1, D)[mask.reshape(-1)]
    logits = q @ torch.cat([t, kept]).T / tau
    want = F.cross_entropy(logits, torch.arange(B))
    torch.testing.assert_close(info_nce(q, t, n, temperature=tau, negative_mask=mask), want, rtol=1e-6, atol=1e-6)
    # the loader's padding: query 1 has no negatives and borrows query 0's target; unmasked, query 0's
    # own positive is also one of its negatives, so its loss cannot fall below log 2
    borrowed = torch.stack([n[0], torch.stack([t[0]] * K), n[2], n[3]])
    pad = torch.tensor([[True] * K, [False] * K, [True] * K, [True] * K])
    masked = info_nce(q, t, borrowed, temperature=tau, negative_mask=pad)
    real_negatives = n[[0, 2, 3]].reshape(-1, D)
    want = F.cross_entropy(q @ torch.cat([t, real_negatives]).T / tau, torch.arange(B))
    torch.testing.assert_close(masked, want, rtol=1e-6, atol=1e-6)
    assert info_nce(q, t, borrowed, temperature=tau) > masked
    with pytest.raises(ValueError, match="negative_mask must be"):
        info_nce(q, t, n, negative_mask=mask[:, :2])
    with pytest.raises(ValueError, match="negative_mask must be"):
        info_nce(q, t, None, negative_mask=mask)


def test_temperature_is_respected():
    q, t = _unit(4, 8, seed=7), _unit(4, 8, seed=8)
    losses = [info_nce(q, t, temperature=tau).item() for tau in (0.02, 0.1, 1.0)]
    assert len(set(losses)) == 3
    # identical queries and targets: a colder temperature makes the diagonal sharper
    assert info_nce(q, q, temperature=0.02) < info_nce(q, q, temperature=1.0)
    # tau -> infinity: uniform over B candidates
    assert info_nce(q, t, temperature=1e6).item() == pytest.approx(math.log(4), rel=1e-5)


def test_zero_hard_negatives_equals_none():
    q, t = _unit(4, 8, seed=9), _unit(4, 8, seed=10)
    torch.testing.assert_close(info_nce(q, t, torch.empty(4, 0, 8)), info_nce(q, t, None))


def test_gradcheck_float64():
    q = _unit(3, 4, seed=11, dtype=torch.float64).requires_grad_()
    t = _unit(3, 4, seed=12, dtype=torch.float64).requires_grad_()
    n = _unit(3, 2, 4, seed=13, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: info_nce(a, b, c, temperature=0.3), (q, t, n))
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, temperature=0.3), (q, t))


def test_half_precision_is_promoted_to_float32():
    q, t = _unit(8, 16, seed=14), _unit(8, 16, seed=15)
    got = info_nce(q.bfloat16(), t.bfloat16(), temperature=0.02)
    assert got.dtype == torch.float32
    want = info_nce(q.bfloat16().float(), t.bfloat16().float(), temperature=0.02)
    torch.testing.assert_close(got, want)


def test_single_process_gather_is_identity_and_scale_is_one():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
    assert loss_scale() == 1
    q, t = _unit(4, 8, seed=16), _unit(4, 8, seed=17)
    torch.testing.assert_close(info_nce(q, t, gather=False), info_nce(q, t, gather=True))


@pytest.mark.parametrize(
    "q_shape, t_shape, n_shape, tau, match",
    [
        ((4, 8), (4, 8), None, 0.0, "temperature"),
        ((4, 8), (3, 8), None, 0.02, "differ in shape"),
        ((4,), (4,), None, 0.02, r"\[B, D\]"),
        ((4, 8), (4, 8), (3, 2, 8), 0.02, "negatives must be"),
        ((4, 8), (4, 8), (4, 2, 7), 0.02, "negatives must be"),
        ((0, 8), (0, 8), None, 0.02, "empty"),
    ],
)
def test_bad_input_raises(q_shape, t_shape, n_shape, tau, match):
    negs = None if n_shape is None else torch.zeros(n_shape)
    with pytest.raises(ValueError, match=match):
        info_nce(torch.zeros(q_shape), torch.zeros(t_shape), negs, temperature=tau)
