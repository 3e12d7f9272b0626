"""Policy networks: normalizer, step causality and padding, overfitting, checkpoints, rollouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policies import BasePolicy, available_policies, create_policy, load_policy
from policies.execution import RecedingHorizon, TemporalEnsemble, resolve_execution
from policies.normalizer import Normalizer, compute_stats
from robo_s2.errors import UserError

DF, DP, DA = 6, 3, 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fit_data(seed: int = 0, n: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "feature": torch.randn(n, DF, generator=g) * 3 + 1,
        "proprio": torch.randn(n, DP, generator=g),
        "action": torch.randn(n, DA, generator=g) * 0.1,
    }


def _small_transformer(**kw) -> BasePolicy:
    torch.manual_seed(0)
    cfg = dict(history=5, chunk=4, d_model=32, n_layers=2, n_heads=2) | kw
    policy = create_policy(
        "chunk_transformer", feature_dim=DF, proprio_dim=DP, action_dim=DA, **cfg
    )
    policy.fit_normalizer(_fit_data())
    return policy.eval()


def _batch(b: int = 3, h: int = 5, seed: int = 1, chunk: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "feature": torch.randn(b, h, DF, generator=g),
        "proprio": torch.randn(b, h, DP, generator=g),
        "prev_action": torch.randn(b, h, DA, generator=g) * 0.1,
        "valid": torch.ones(b, h, dtype=torch.bool),
        "action_chunk": torch.randn(b, chunk, DA, generator=g) * 0.1,
        "chunk_valid": torch.ones(b, chunk, dtype=torch.bool),
    }


def _clone(batch: dict) -> dict:
    return {k: v.clone() for k, v in batch.items()}


# ---------------------------------------------------------------------------------- normalizer
@pytest.mark.parametrize("mode", ["gaussian", "limits"])
def test_normalizer_round_trip_and_ranges(mode):
    data = _fit_data()
    norm = Normalizer({"feature": DF, "proprio": DP, "action": DA}, mode).fit(data)
    for key, x in data.items():
        y = norm.normalize(x, key)
        assert torch.allclose(norm.unnormalize(y, key), x, atol=1e-5)
        if mode == "gaussian":
            assert torch.allclose(y.mean(0), torch.zeros(x.shape[1]), atol=1e-5)
            assert torch.allclose(y.std(0, unbiased=False), torch.ones(x.shape[1]), atol=1e-4)
        else:
            assert torch.allclose(y.min(0).values, -torch.ones(x.shape[1]), atol=1e-5)
            assert torch.allclose(y.max(0).values, torch.ones(x.shape[1]), atol=1e-5)


@pytest.mark.parametrize("mode", ["gaussian", "limits"])
def test_normalizer_constant_dims_are_safe(mode):
    x = np.random.default_rng(0).normal(size=(50, 4))
    x[:, 1] = 7.0  # constant
    x[:, 3] = 0.0  # constant zero
    norm = Normalizer({"action": 4}, mode).fit({"action": x})
    y = norm.normalize(torch.tensor(x, dtype=torch.float32), "action")
    assert torch.isfinite(y).all()
    assert torch.equal(y[:, 1], torch.zeros(50)) and torch.equal(y[:, 3], torch.zeros(50))
    shifted = torch.full((1, 4), 7.5)  # a deviation at test time is not blown up
    assert norm.normalize(shifted, "action")[0, 1].item() == pytest.approx(0.5)
    assert torch.allclose(norm.unnormalize(y, "action"), torch.tensor(x, dtype=torch.float32))


def test_normalizer_state_dict_stats_and_grid_round_trip():
    data = _fit_data()
    norm = Normalizer({"feature": DF, "proprio": DP, "action": DA}, {"action": "limits"}).fit(data)
    fresh = Normalizer({"feature": DF, "proprio": DP, "action": DA}, {"action": "limits"})
    assert not fresh.is_fitted
    fresh.load_state_dict(norm.state_dict())
    assert fresh.is_fitted
    for key, x in data.items():
        assert torch.equal(fresh.normalize(x, key), norm.normalize(x, key))
    # fitting from stats equals fitting from arrays; a (N, K, Dt) grid is the flat feature
    from_stats = Normalizer({"feature": DF, "proprio": DP, "action": DA}, {"action": "limits"})
    from_stats.fit(norm.stats())
    for key, x in data.items():
        assert torch.allclose(from_stats.normalize(x, key), norm.normalize(x, key), atol=1e-6)
    grid = data["feature"].view(-1, 2, 3)
    assert torch.equal(
        norm.normalize(grid, "feature").flatten(-2), norm.normalize(data["feature"], "feature")
    )
    # chunked float64 statistics equal numpy's
    x = np.random.default_rng(1).normal(size=(1001, 5)) * 100 + 1e3
    s = compute_stats(x, rows_per_chunk=97)
    assert np.allclose(s["mean"], x.mean(0)) and np.allclose(s["std"], x.std(0))
    assert np.array_equal(s["min"], x.min(0)) and np.array_equal(s["max"], x.max(0))


def test_unfitted_policy_and_bad_fit_are_clear_errors():
    policy = create_policy("chunk_transformer", feature_dim=DF, proprio_dim=DP, action_dim=DA)
    with pytest.raises(RuntimeError, match="fit_normalizer"):
        policy(_batch(h=16, chunk=16))
    with pytest.raises(UserError, match="missing"):
        policy.fit_normalizer({"feature": np.zeros((4, DF))})
    with pytest.raises(UserError, match="NaN"):
        policy.fit_normalizer({k: np.full((4, v.shape[1]), np.nan) for k, v in _fit_data().items()})


# ---------------------------------------------------------------------------------- registry
def test_registry_and_unknown_policy():
    assert {"chunk_transformer", "mlp"} <= set(available_policies())
    with pytest.raises(UserError, match="chunk_transformer.*mlp|mlp.*chunk_transformer"):
        create_policy("no_such_policy", feature_dim=4)
    with pytest.raises(UserError, match="bad options"):
        create_policy("mlp", feature_dim=4, proprio_dim=1, action_dim=1, n_layers=3)
    with pytest.raises(UserError, match="n_action_steps"):
        create_policy(
            "mlp",
            feature_dim=4,
            proprio_dim=1,
            action_dim=1,
            chunk=4,
            execution={"n_action_steps": 5},
        )
    with pytest.raises(UserError, match="mode"):
        resolve_execution({"mode": "magic"}, chunk=4)


def test_default_sizes():
    policy = create_policy("chunk_transformer", feature_dim=768, proprio_dim=10, action_dim=4)
    cfg = policy.config
    assert (cfg["history"], cfg["chunk"], cfg["d_model"], cfg["n_layers"], cfg["n_heads"]) == (
        16,
        16,
        256,
        4,
        4,
    )
    assert cfg["dropout"] == 0.1 and cfg["execution"] == {  # configs/policy's ensemble
        "mode": "ensemble",
        "n_action_steps": 8,
        "k": 0.01,
    }
    assert 3e6 < policy.num_parameters() < 6e6


# ---------------------------------------------------------------------------------- transformer
def test_step_causality_of_per_step_outputs():
    policy = _small_transformer()
    batch = _batch()
    enc, _ = policy.encode(batch)
    j = 3
    changed = _clone(batch)
    changed["feature"][:, j] += 5.0
    changed["proprio"][:, j] -= 2.0
    changed["prev_action"][:, j] += 1.0
    enc2, _ = policy.encode(changed)
    assert torch.equal(enc[:, :j], enc2[:, :j])  # steps before j cannot see step j
    assert (enc[:, j:] - enc2[:, j:]).abs().amax(dim=(0, 2, 3)).min() > 1e-3  # j and later do
    assert not torch.equal(policy(batch), policy(changed))


def test_padded_steps_do_not_influence_prediction():
    policy = _small_transformer()
    batch = _batch()
    batch["valid"][0, :2] = False
    batch["valid"][1, :4] = False  # all but the current step padded
    out = policy(batch)
    assert torch.isfinite(out).all()
    garbage = _clone(batch)
    pad = ~garbage["valid"]
    garbage["feature"][pad] = 1e6
    garbage["proprio"][pad] = float("nan")
    garbage["prev_action"][pad] = -3.0
    assert torch.equal(policy(garbage), out)
    # a window with only its current step valid predicts what a 1-step window predicts
    one = {k: batch[k][1:2, -1:] for k in ("feature", "proprio", "prev_action", "valid")}
    assert torch.allclose(policy(one), out[1:2], atol=1e-5)
    with pytest.raises(ValueError, match="current"):
        bad = _clone(batch)
        bad["valid"][2, -1] = False
        policy(bad)


def test_grid_feature_tokens_flat_and_4d_agree():
    torch.manual_seed(0)
    policy = create_policy(
        "chunk_transformer",
        feature_dim=DF,
        proprio_dim=DP,
        action_dim=DA,
        feature_tokens=3,
        history=5,
        chunk=4,
        d_model=32,
        n_layers=1,
        n_heads=2,
    )
    policy.fit_normalizer(_fit_data())
    policy.eval()
    assert policy.tokens_per_step == 5
    batch = _batch()
    grid = dict(batch, feature=batch["feature"].view(3, 5, 3, 2))
    assert torch.equal(policy(batch), policy(grid))
    swapped = dict(grid, feature=grid["feature"].flip(2))  # spatial embedding: token order matters
    assert not torch.allclose(policy(swapped), policy(grid))


@pytest.mark.parametrize("loss_type", ["l1", "smooth_l1", "mse"])
def test_loss_ignores_targets_past_episode_end(loss_type):
    policy = _small_transformer(loss=loss_type)
    batch = _batch()
    batch["chunk_valid"][0, 2:] = False
    loss, metrics = policy.compute_loss(batch)
    other = _clone(batch)
    other["action_chunk"][0, 2:] = float("nan")
    loss2, _ = policy.compute_loss(other)
    assert torch.isfinite(loss) and torch.equal(loss, loss2)
    assert set(metrics) == {"loss", "l1", "mse"} and metrics["loss"].requires_grad is False


def _synthetic(n: int, h: int, chunk: int, seed: int, lag: int) -> dict[str, torch.Tensor]:
    """Next actions: a nonlinear function of the current feature and proprio ``lag`` steps ago."""
    g = torch.Generator().manual_seed(seed)
    f, p = torch.randn(n, h, DF, generator=g), torch.randn(n, h, DP, generator=g)
    w, v = torch.randn(DF, DA, generator=g), torch.randn(DP, generator=g)
    amp = torch.tanh(f[:, -1] @ w)[:, None, :]
    phase = (p[:, -1 - lag] @ v)[:, None, None]
    j = torch.arange(chunk, dtype=torch.float32)[None, :, None]
    y = amp * torch.cos(0.7 * j + phase) + 0.5 * torch.sin(f[:, -1, :DA])[:, None, :]
    return {
        "feature": f,
        "proprio": p,
        "prev_action": torch.zeros(n, h, DA),
        "valid": torch.ones(n, h, dtype=torch.bool),
        "action_chunk": y,
        "chunk_valid": torch.ones(n, chunk, dtype=torch.bool),
    }


@pytest.mark.parametrize(
    "name, kw, steps, lr, lag",
    [  # the transformer must use the history (lag 1); the mlp sees the current step only (lag 0)
        (
            "chunk_transformer",
            dict(history=4, d_model=64, n_layers=2, n_heads=4, dropout=0.0),
            400,
            1e-3,
            1,
        ),
        ("mlp", dict(hidden_dims=[128, 128], dropout=0.0), 600, 3e-3, 0),
    ],
)
def test_overfits_small_dataset(name, kw, steps, lr, lag):
    n, h, chunk = 128, 4, 4
    data = _synthetic(n, h, chunk, seed=0, lag=lag)
    torch.manual_seed(0)
    policy = create_policy(name, feature_dim=DF, proprio_dim=DP, action_dim=DA, chunk=chunk, **kw)
    policy.fit_normalizer(
        {
            "feature": data["feature"].reshape(-1, DF),
            "proprio": data["proprio"].reshape(-1, DP),
            "action": data["action_chunk"].reshape(-1, DA),
        }
    )
    target = policy.normalizer.normalize(data["action_chunk"], "action")
    baseline = (target - target.median(0).values).abs().mean().item()  # best constant under L1
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    policy.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (32,))
        loss, _ = policy.compute_loss({k: v[idx] for k, v in data.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    with torch.no_grad():
        final, _ = policy.compute_loss(data)
    assert final.item() / baseline < 0.3, final.item() / baseline


# ---------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ["chunk_transformer", "mlp"])
def test_save_pretrained_reproduces_outputs_exactly(tmp_path, name):
    torch.manual_seed(0)
    kw = dict(history=5, d_model=32, n_layers=1, n_heads=2) if name == "chunk_transformer" else {}
    policy = create_policy(
        name,
        feature_dim=DF,
        proprio_dim=DP,
        action_dim=DA,
        chunk=4,
        normalization={"action": "limits"},
        execution={"mode": "ensemble", "k": 0.05},
        **kw,
    )
    policy.fit_normalizer(_fit_data())
    policy.eval()
    batch = _batch(h=policy.history)
    ref = policy.predict_chunk(batch)

    rebuilt = create_policy(**json.loads(json.dumps(policy.config)))
    rebuilt.load_state_dict(policy.state_dict())
    assert (rebuilt.eval().predict_chunk(batch) - ref).abs().max().item() == 0

    policy.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"model.safetensors", "config.json"}
    loaded = load_policy(tmp_path / "ckpt")
    assert type(loaded) is type(policy) and loaded.config == policy.config
    assert loaded.normalizer.is_fitted
    assert (loaded.eval().predict_chunk(batch) - ref).abs().max().item() == 0
    assert type(policy).from_pretrained(tmp_path / "ckpt").config == policy.config
    with pytest.raises(UserError, match="not a saved policy"):
        load_policy(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------- rollouts
class StubPolicy(BasePolicy):
    """Predicts ``chunk[j] = 100 * t + j + 10000 * env`` where the current obs feature is
    ``t + 1000 * env`` (read back from the window); records every query."""

    name = "stub"

    def __init__(self, chunk: int = 4, history: int = 3, execution=None) -> None:
        super().__init__(
            feature_dim=1,
            proprio_dim=0,
            action_dim=1,
            history=history,
            chunk=chunk,
            execution=execution,
        )
        self.queries: list[tuple[np.ndarray, int]] = []

    def predict_chunk(self, batch):
        cur = batch["feature"][:, -1, 0]
        env, t = torch.div(cur, 1000, rounding_mode="floor"), torch.remainder(cur, 1000)
        self.queries.append((env.long().numpy(), int(t[0])))
        j = torch.arange(self.chunk, dtype=torch.float32)
        return (100 * t[:, None] + j[None, :] + 10000 * env[:, None])[..., None]


def _run_stub(policy, n_envs: int, steps: int) -> np.ndarray:
    policy.reset(n_envs)
    out = []
    for t in range(steps):
        obs = {"feature": np.array([[t + 1000.0 * e] for e in range(n_envs)])}
        out.append(policy.act(obs)[:, 0])
    return np.stack(out)  # (steps, n_envs)


def test_receding_horizon_replans_every_n_steps():
    policy = StubPolicy(chunk=4, execution={"mode": "receding", "n_action_steps": 3})
    acts = _run_stub(policy, n_envs=2, steps=7)
    assert [t for _, t in policy.queries] == [0, 3, 6]
    for t in range(7):
        q = 3 * (t // 3)
        assert acts[t].tolist() == [100 * q + (t - q), 10000 + 100 * q + (t - q)]


def test_temporal_ensemble_matches_hand_computed_weights():
    k, chunk = 0.5, 4
    policy = StubPolicy(chunk=chunk, execution={"mode": "ensemble", "k": k})
    acts = _run_stub(policy, n_envs=2, steps=7)
    assert [t for _, t in policy.queries] == list(range(7))  # a query every step
    for t in range(7):
        query_times = list(range(max(0, t - chunk + 1), t + 1))  # oldest first
        w = np.array([np.exp(-k * i) for i in range(len(query_times))])
        w /= w.sum()
        preds = np.array([100 * s + (t - s) for s in query_times])
        assert acts[t, 0] == pytest.approx(float(w @ preds), rel=1e-6)
        assert acts[t, 1] == pytest.approx(float(w @ preds) + 10000, rel=1e-6)
    # the oldest prediction weighs most for k > 0 (ACT)
    assert TemporalEnsemble(chunk, 1, k).weights(3)[0] > TemporalEnsemble(chunk, 1, k).weights(3)[2]


def test_reset_env_ids_restarts_only_those_envs():
    policy = StubPolicy(chunk=4, execution={"mode": "receding", "n_action_steps": 2})
    policy.reset(2)
    for t in range(3):
        policy.act({"feature": np.array([[t], [1000.0 + t]])})
    policy.reset(env_ids=[1])
    assert policy._rollout.valid[1].sum() == 0 and policy._rollout.valid[0].sum() == 3
    policy.queries.clear()
    policy.act({"feature": np.array([[3.0], [1000.0]])})
    assert [e.tolist() for e, _ in policy.queries] == [
        [1]
    ]  # env 1 re-plans at once, env 0 keeps its plan


def test_act_per_env_histories_are_independent():
    policy = _small_transformer(dropout=0.1, execution={"mode": "receding", "n_action_steps": 2})
    rng = np.random.default_rng(0)
    obs = [
        {"feature": rng.normal(size=(2, DF)), "proprio": rng.normal(size=(2, DP))} for _ in range(7)
    ]

    def rollout(reset_at: int | None, n_envs: int = 2, env: slice = slice(None)):
        policy.reset(n_envs)
        acts = []
        for t, o in enumerate(obs):
            if t == reset_at:
                policy.reset(env_ids=[1])
            acts.append(policy.act({k: v[env] for k, v in o.items()}))
        return np.stack(acts)

    plain, with_reset = rollout(None), rollout(4)
    assert np.allclose(
        plain[:, 0], with_reset[:, 0], atol=1e-5
    )  # env 0 unaffected by env 1's reset
    assert not np.allclose(plain[4:, 1], with_reset[4:, 1])
    # after its reset env 1 acts exactly like a fresh single-env rollout of the same observations
    policy.reset(1)
    fresh = np.stack([policy.act({k: v[1:2] for k, v in o.items()}) for o in obs[4:]])
    assert np.allclose(with_reset[4:, 1], fresh[:, 0], atol=1e-5)
    assert policy.training is False and with_reset.dtype == np.float32


def test_receding_executor_validates_state():
    ex = RecedingHorizon(chunk=4, action_dim=1, n_action_steps=2)
    ex.reset(1)
    with pytest.raises(RuntimeError):
        ex.step()


def test_mlp_uses_current_step_only():
    torch.manual_seed(0)
    policy = create_policy("mlp", feature_dim=DF, proprio_dim=DP, action_dim=DA, chunk=4)
    policy.fit_normalizer(_fit_data())
    policy.eval()
    batch = _batch(h=5)
    out = policy(batch)
    assert out.shape == (3, 4, DA)
    past = _clone(batch)
    past["feature"][:, :-1] += 3.0
    past["prev_action"] += 1.0
    assert torch.equal(policy(past), out)
    policy.reset(2)
    assert policy.act({"feature": np.zeros((2, DF)), "proprio": np.zeros((2, DP))}).shape == (2, DA)
