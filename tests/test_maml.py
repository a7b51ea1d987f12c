"""Tests of the MAML / iMAML baselines (src/mnk/maml.py, src/mnk/nets.py).

Gradient correctness (float64, tiny models): vmapped MAML meta-gradient == per-task loop,
finite differences; iMAML CG hypergradient == explicit-Hessian solve, == finite
differences of the proximal solution. Learning on a tiny synthetic 5-way 1-shot
configuration, options validation, repeatability.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from mnk import maml as M
from mnk.nets import BatchStatNorm2d, build_network

torch.set_num_threads(1)

# torch's own forward-mode decompositions (used by jvp in iMAML) call torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _tiny_net(hidden=3, size=8, way=5, seed=0):
    torch.manual_seed(seed)
    return build_network("conv3", n_classes=way, image_size=(size, size), hidden=hidden).double()


def _tiny_batch(n_tasks=3, way=5, shot=1, query=2, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n_tasks, way * shot, 1, size, size, generator=g, dtype=torch.float64)
    xq = torch.randn(n_tasks, way * query, 1, size, size, generator=g, dtype=torch.float64)
    ys = torch.arange(way).repeat_interleave(shot).repeat(n_tasks, 1)
    yq = torch.arange(way).repeat_interleave(query).repeat(n_tasks, 1)
    return xs, ys, xq, yq


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _maxdiff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _flat(d):
    return torch.cat([v.reshape(-1) for v in d.values()])


def _unflat(vec, like):
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i : i + v.numel()].view_as(v)
        i += v.numel()
    return out


# ------------------------------------------------------------------- networks


def test_batchstatnorm_matches_torch_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    ours = BatchStatNorm2d(4).double()
    ref = nn.BatchNorm2d(4, track_running_stats=False).double()
    with torch.no_grad():
        for mod in (ours, ref):
            mod.weight.copy_(torch.linspace(0.5, 2, 4))
            mod.bias.copy_(torch.linspace(-1, 1, 4))
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("name,size", [("conv3", 28), ("conv4", 28), ("conv3", 32), ("conv4", 32)])
def test_networks_shapes(name, size):
    net = build_network(name, n_classes=5, image_size=(size, size), hidden=8)
    assert net(torch.zeros(7, 1, size, size)).shape == (7, 5)
    assert len(list(net.buffers())) == 0  # pure under functional_call


# --------------------------------------------------------------------- MAML


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_vmap_matches_per_task_loop(first_order):
    model = _tiny_net()
    params = _params(model)
    batch = _tiny_batch()
    kw = dict(inner_steps=2, inner_lr=0.4, first_order=first_order)
    g_vmap, loss_v, acc_v = M.maml_meta_gradient(model, params, batch, **kw)
    g_loop, loss_l, acc_l = M.maml_meta_gradient_loop(model, params, batch, **kw)
    assert set(g_vmap) == set(g_loop) == set(params)
    assert _maxdiff(g_vmap, g_loop) < 1e-10
    assert abs(float(loss_v) - float(loss_l)) < 1e-12
    assert abs(float(acc_v) - float(acc_l)) < 1e-12
    # second and first order really differ (the test would be vacuous otherwise)
    g_other, _, _ = M.maml_meta_gradient(
        model, params, batch, **{**kw, "first_order": not first_order}
    )
    assert _maxdiff(g_vmap, g_other) > 1e-4


def test_maml_meta_gradient_finite_difference():
    model = _tiny_net()
    params = _params(model)
    batch = _tiny_batch(n_tasks=2)
    kw = dict(inner_steps=1, inner_lr=0.4)
    grads, _, _ = M.maml_meta_gradient(model, params, batch, **kw)

    def meta_loss(p):
        return float(M.maml_meta_gradient_loop(model, p, batch, **kw)[1])

    gen = torch.Generator().manual_seed(3)
    eps = 1e-6
    for _ in range(3):
        d = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
        plus = meta_loss({k: params[k] + eps * d[k] for k in params})
        minus = meta_loss({k: params[k] - eps * d[k] for k in params})
        fd = (plus - minus) / (2 * eps)
        analytic = float(sum((grads[k] * d[k]).sum() for k in params))
        assert abs(fd - analytic) < 1e-6 * max(1.0, abs(fd)), (fd, analytic)


# -------------------------------------------------------------------- iMAML


def test_imaml_cg_matches_explicit_hessian_solve():
    model = _tiny_net(hidden=2)
    params = _params(model)
    xs, ys, xq, yq = (b[0] for b in _tiny_batch(n_tasks=1, shot=2))
    # lam such that I + H/lam is SPD (CG, like iMAML, assumes it; asserted below) and
    # well enough conditioned for 40 CG steps to reach machine precision.
    lam, n = 10.0, sum(v.numel() for v in params.values())
    phi = M.adapt(model, params, xs, ys, steps=5, lr=0.1, lam=lam)
    g_cg, _, _ = M.imaml_task_hypergradient(
        model,
        params,
        xs,
        ys,
        xq,
        yq,
        inner_steps=0,
        inner_lr=0.1,
        lam=lam,
        cg_steps=40,
        phi=phi,
    )

    def support_loss(vec):
        return M._loss_and_logits(model, _unflat(vec, phi), xs, ys)[0]

    def query_loss(vec):
        return M._loss_and_logits(model, _unflat(vec, phi), xq, yq)[0]

    phi_vec = _flat(phi)
    hess = torch.func.hessian(support_loss)(phi_vec)
    a = torch.eye(n, dtype=torch.float64) + hess / lam
    assert torch.linalg.eigvalsh(a).min() > 0  # CG needs an SPD system
    grad_q = torch.func.grad(query_loss)(phi_vec)
    exact = torch.linalg.solve(a, grad_q)
    assert (exact - grad_q).norm() > 0.1 * grad_q.norm()  # the Hessian term matters here
    torch.testing.assert_close(_flat(g_cg), exact, rtol=1e-7, atol=1e-9)

    # fewer steps (K = 5 is the default) approximate it: CG's A-norm error decreases in K
    def a_norm_error(k):
        gk, _, _ = M.imaml_task_hypergradient(
            model,
            params,
            xs,
            ys,
            xq,
            yq,
            inner_steps=0,
            inner_lr=0.1,
            lam=lam,
            cg_steps=k,
            phi=phi,
        )
        e = _flat(gk) - exact
        return float(e @ a @ e)

    errors = [a_norm_error(k) for k in (0, 1, 2, 5)]
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:])), errors
    # damped system of the original iMAML code: ((1 + c) I + H / (lam + d)) g = grad L_q
    c, d = 1.0, 10.0
    g_damped, _, _ = M.imaml_task_hypergradient(
        model,
        params,
        xs,
        ys,
        xq,
        yq,
        inner_steps=0,
        inner_lr=0.1,
        lam=lam,
        cg_steps=40,
        phi=phi,
        cg_damping=c,
        lam_damping=d,
    )
    a_damped = (1 + c) * torch.eye(n, dtype=torch.float64) + hess / (lam + d)
    torch.testing.assert_close(
        _flat(g_damped), torch.linalg.solve(a_damped, grad_q), rtol=1e-7, atol=1e-9
    )


def test_imaml_hypergradient_is_derivative_of_proximal_solution():
    """With a convex inner problem solved to convergence, the implicit gradient equals
    the finite-difference derivative of L_query(phi*(theta))."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    params = _params(model)
    xs, ys, xq, yq = (b[0] for b in _tiny_batch(n_tasks=1, way=3, shot=2, query=3, size=4))
    kw = dict(inner_steps=150, inner_lr=0.1, lam=2.0)  # contraction <= 0.8 per step
    g, _, _ = M.imaml_task_hypergradient(model, params, xs, ys, xq, yq, cg_steps=60, **kw)

    def outer(p):
        phi = M.adapt(model, p, xs, ys, steps=kw["inner_steps"], lr=kw["inner_lr"], lam=kw["lam"])
        return float(M._loss_and_logits(model, phi, xq, yq)[0])

    gen = torch.Generator().manual_seed(5)
    eps = 1e-6
    for _ in range(3):
        d = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
        fd = (
            outer({k: params[k] + eps * d[k] for k in params})
            - outer({k: params[k] - eps * d[k] for k in params})
        ) / (2 * eps)
        analytic = float(sum((g[k] * d[k]).sum() for k in params))
        assert abs(fd - analytic) < 1e-6 * max(1.0, abs(fd)), (fd, analytic)


def test_imaml_vmap_matches_per_task_loop():
    model = _tiny_net()
    params = _params(model)
    batch = _tiny_batch(n_tasks=3)
    kw = dict(inner_steps=3, inner_lr=0.1, lam=2.0, cg_steps=5, cg_damping=1.0, lam_damping=10.0)
    g, loss, acc = M.imaml_meta_gradient(model, params, batch, **kw)
    g_loop, loss_loop, acc_loop = M.imaml_meta_gradient_loop(model, params, batch, **kw)
    assert _maxdiff(g, g_loop) < 1e-12
    assert abs(float(loss) - float(loss_loop)) < 1e-12
    assert abs(float(acc) - float(acc_loop)) < 1e-12


# ------------------------------------------------------------------ options


def test_resolve_options_defaults_and_unknown_key():
    o = M.resolve_options("imaml", {})
    assert (o.lam, o.inner_steps, o.cg_steps, o.inner_lr, o.meta_batch_size) == (
        2.0,
        16,
        5,
        0.1,
        16,
    )
    assert (o.cg_damping, o.lam_damping) == (1.0, 10.0)  # the original iMAML code's
    assert M.resolve_options("imaml", {"cg_damping": 0, "lam_damping": 0}).cg_damping == 0.0
    assert M.resolve_options("maml", {}).first_order is False
    assert M.resolve_options("maml", {"first_order": True, "hidden": 32}).hidden == 32
    with pytest.raises(ValueError, match="bogus_key"):
        M.resolve_options("maml", {"bogus_key": 1})
    with pytest.raises(ValueError, match="lam"):
        M.resolve_options("maml", {"lam": 1.0})  # iMAML-only option
    with pytest.raises(ValueError, match="first_order"):
        M.resolve_options("imaml", {"first_order": True})
    with pytest.raises(ValueError, match="implementation"):
        M.resolve_options("imaml", {"implementation": "jit"})
    with pytest.raises(ValueError, match="network"):
        M.resolve_options("maml", {"network": "resnet"})
    with pytest.raises(ValueError, match="method"):
        M.resolve_options("reptile", {})


# ------------------------------------------------------ synthetic learning data


def synthetic_fewshot(
    *,
    n_classes=40,
    n_train_classes=30,
    per_class=10,
    way=5,
    shot=1,
    query=5,
    n_train_tasks=100,
    n_val_tasks=20,
    n_test_tasks=30,
    size=28,
    seed=0,
):
    """Omniglot-like toy data: each class is a random stroke pattern; instances are
    shifted, noisy copies. Returns (images, tasks) in the make_tasks contract."""
    rng = np.random.default_rng(seed)
    protos = np.zeros((n_classes, size + 4, size + 4), np.float32)
    for c in range(n_classes):
        for _ in range(4):  # four random thick strokes
            (r0, c0), (r1, c1) = rng.integers(4, size, size=(2, 2))
            for t in np.linspace(0, 1, 3 * size):
                r, q = int(round(r0 + t * (r1 - r0))), int(round(c0 + t * (c1 - c0)))
                protos[c, r - 1 : r + 2, q - 1 : q + 2] = 1.0
    images, labels = [], []
    for c in range(n_classes):
        for _ in range(per_class):
            dr, dc = rng.integers(1, 4, size=2)
            img = protos[c, dr : dr + size, dc : dc + size].copy()
            img += rng.normal(0, 0.2, img.shape).astype(np.float32)
            images.append(img)
            labels.append(c)
    images = np.stack(images).astype(np.float32)
    labels = np.asarray(labels)
    by_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    tasks = {"way": np.int64(way), "shot": np.int64(shot), "query": np.int64(query)}
    pools = {
        "train": range(n_train_classes),
        "val": range(n_train_classes),
        "test": range(n_train_classes, n_classes),
    }
    for name, n_tasks in (("train", n_train_tasks), ("val", n_val_tasks), ("test", n_test_tasks)):
        sup, qry = [], []
        for _ in range(n_tasks):
            classes = rng.choice(list(pools[name]), size=way, replace=False)
            s, q = [], []
            for c in classes:
                pick = rng.choice(by_class[c], size=shot + query, replace=False)
                s.extend(pick[:shot])
                q.extend(pick[shot:])
            sup.append(s)
            qry.append(q)
        tasks[f"{name}_support"] = np.asarray(sup, np.int64)
        tasks[f"{name}_query"] = np.asarray(qry, np.int64)
        tasks[f"{name}_support_labels"] = np.tile(np.repeat(np.arange(way), shot), (n_tasks, 1))
        tasks[f"{name}_query_labels"] = np.tile(np.repeat(np.arange(way), query), (n_tasks, 1))
    return images, tasks


@pytest.fixture(scope="module")
def toy():
    return synthetic_fewshot(query=3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,options",
    [
        (
            "maml",
            dict(hidden=8, meta_iterations=30, meta_batch_size=4, eval_every=15, meta_lr=0.01),
        ),
        (
            "imaml",
            dict(
                hidden=8,
                meta_iterations=20,
                meta_batch_size=4,
                eval_every=10,
                meta_lr=0.01,
                inner_steps=5,
                test_inner_steps=5,
            ),
        ),
    ],
)
def test_learns_well_above_chance(toy, method, options):
    images, tasks = toy
    metrics, checkpoint = M.train_and_evaluate(
        images, tasks, method=method, options=options, seed=0, progress=False
    )
    json.dumps(metrics)  # JSON-serialisable
    assert metrics["n_test_tasks"] == 30 and metrics["n_val_tasks"] == 20
    assert metrics["ci95_low"] <= metrics["accuracy"] <= metrics["ci95_high"]
    assert metrics["accuracy"] > 0.5, metrics["learning_curve"]  # chance is 0.2
    curve = metrics["learning_curve"]
    assert [e["iteration"] for e in curve] == list(
        range(options["eval_every"], options["meta_iterations"] + 1, options["eval_every"])
    )
    best = max(curve, key=lambda e: e["val_acc"])
    assert metrics["selected_iteration"] == checkpoint["iteration"] == best["iteration"]
    assert metrics["val_accuracy"] == best["val_acc"]
    assert metrics["accuracy"] == pytest.approx(best["test_acc"])
    assert metrics["max_test_accuracy_over_evaluations"] == max(e["test_acc"] for e in curve)
    # the checkpoint reloads into the network
    net = build_network(
        options.get("network", "conv3"), n_classes=5, image_size=(28, 28), hidden=options["hidden"]
    )
    net.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["options"] == metrics["options"]


@pytest.mark.parametrize("method", ["maml", "imaml"])
def test_same_seed_same_metrics(toy, method):
    images, tasks = toy
    small = {k: (v[:6] if k.startswith(("val_", "test_")) else v) for k, v in tasks.items()}
    opts = dict(
        hidden=4,
        meta_iterations=4,
        meta_batch_size=3,
        eval_every=2,
        inner_steps=2,
        test_inner_steps=2,
    )

    def run(seed):
        m, c = M.train_and_evaluate(
            images, small, method=method, options=opts, seed=seed, progress=False
        )
        m.pop("wall_seconds")
        return m, c

    (m1, c1), (m2, c2), (m3, _) = run(7), run(7), run(8)
    assert m1 == m2
    for k in c1["state_dict"]:
        assert torch.equal(c1["state_dict"][k], c2["state_dict"][k])
    assert m1["learning_curve"] != m3["learning_curve"]
    assert m1["options"]["hidden"] == 4 and m1["n_test_tasks"] == 6
    # the per-task loop implementation trains the same model (up to rounding)
    m4, _ = M.train_and_evaluate(
        images,
        small,
        method=method,
        options={**opts, "implementation": "loop"},
        seed=7,
        progress=False,
    )
    for a, b in zip(m1["learning_curve"], m4["learning_curve"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_unknown_option_rejected_by_entry_point(toy):
    images, tasks = toy
    # no validation tasks: the last evaluation is selected
    no_val = {
        k: (v[:0] if k.startswith("val_") else v[:4] if k.startswith("test_") else v)
        for k, v in tasks.items()
    }
    m, c = M.train_and_evaluate(
        images,
        no_val,
        method="maml",
        seed=0,
        progress=False,
        options=dict(hidden=4, meta_iterations=2, meta_batch_size=2, eval_every=1),
    )
    assert m["selected_iteration"] == c["iteration"] == 2 and m["val_accuracy"] is None
    assert len(m["test_per_task_accuracy"]) == 4
    with pytest.raises(ValueError, match="inner_stepz"):
        M.train_and_evaluate(
            images, tasks, method="maml", options={"inner_stepz": 3}, seed=0, progress=False
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_meta_gradients_match_cpu():
    model = _tiny_net()
    params = _params(model)
    batch = _tiny_batch()
    cuda = torch.device("cuda")
    model_c = _tiny_net().to(cuda)
    params_c = {k: v.to(cuda) for k, v in params.items()}
    batch_c = tuple(b.to(cuda) for b in batch)
    g, _, _ = M.maml_meta_gradient(model, params, batch, inner_steps=2, inner_lr=0.4)
    g_c, _, _ = M.maml_meta_gradient(model_c, params_c, batch_c, inner_steps=2, inner_lr=0.4)
    assert _maxdiff(g, {k: v.cpu() for k, v in g_c.items()}) < 1e-8
    kw = dict(inner_steps=3, inner_lr=0.1, lam=2.0, cg_steps=5)
    h, _, _ = M.imaml_meta_gradient(model, params, batch, **kw)
    h_c, _, _ = M.imaml_meta_gradient(model_c, params_c, batch_c, **kw)
    assert _maxdiff(h, {k: v.cpu() for k, v in h_c.items()}) < 1e-8
