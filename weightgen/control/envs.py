"""Control tasks: a policy network judged by its return in a gymnasium environment.

A policy is any net from the nets registry that maps an observation ``(obs_dim,)`` to one logit per
discrete action; it acts greedily (the argmax), so a policy has one return per episode and no
sampling noise. A batch of policies is scored by its mean return over a fixed set of seeded
episodes in one vectorized pass: every (policy, episode) pair is one environment of one gymnasium
vector environment, and all policies act at once, their stacked parameters under
``torch.func.vmap``. CartPole has gymnasium's native vector form (``vector_entry_point``: one numpy
array for every environment); an environment without one runs as a ``SyncVectorEnv``.

An episode is fixed by its seed: the start state of a single environment reset with that seed.
Splits use different seeds (train, val and test), so a zoo's ``test_return`` is measured on episodes
the trainer never scored. gymnasium is imported where it is used (the ``control`` extra).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from weightgen.tasks.base import SPLITS, Task
from weightgen.tasks.registry import TASKS


@dataclass(frozen=True)
class EnvInfo:
    """What a policy must fit and how its return reads: observation size, number of actions, the
    episode's step limit, and the return gymnasium counts as solved."""

    env_id: str
    obs_dim: int
    actions: int
    max_steps: int
    solved: float
    native_vector: bool  # gymnasium's own vector form (vectorization_mode="vector_entry_point")


# The supported environments: discrete actions, classic control (shipped with gymnasium, nothing downloaded).
ENVS: dict[str, EnvInfo] = {
    "CartPole-v1": EnvInfo("CartPole-v1", 4, 2, 500, 475.0, True),
    "Acrobot-v1": EnvInfo("Acrobot-v1", 6, 3, 500, -100.0, False),
}

# Seeds of the episodes of each split: split s, episode e -> SPLIT_SEED[s] + seed + e.
SPLIT_SEED = {"train": 0, "val": 100_000, "test": 200_000}


def env_info(env_id: str) -> EnvInfo:
    """The supported environment ``env_id``; any other is refused with the list of supported ones."""
    if env_id not in ENVS:
        raise ValueError(f"environment '{env_id}' is not supported; supported: {', '.join(ENVS)}")
    return ENVS[env_id]


def episode_seeds(seed: int, split: str, episodes: int) -> list[int]:
    """The seeds of ``split``'s fixed episodes."""
    if split not in SPLIT_SEED:
        raise ValueError(f"unknown split '{split}'; allowed: {', '.join(SPLIT_SEED)}")
    return [SPLIT_SEED[split] + seed + e for e in range(episodes)]


def start_observations(env_id: str, seeds: list[int]) -> np.ndarray:
    """``(E, obs_dim)`` start observations of the episodes seeded ``seeds`` (a single env reset each)."""
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        return np.stack([env.reset(seed=int(s))[0] for s in seeds]).astype(np.float32)
    finally:
        env.close()


def _start_states(env_id: str, seeds: list[int]) -> np.ndarray:
    """``(E, state)`` the simulator states the episodes seeded ``seeds`` start from."""
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        out = []
        for s in seeds:
            env.reset(seed=int(s))
            out.append(np.array(env.unwrapped.state, dtype=np.float64))
        return np.stack(out)
    finally:
        env.close()


def make_vector_env(env_id: str, seeds: list[int], render_mode: str | None = None):
    """One vector environment with one sub-environment per seed, each reset to its seeded episode's
    start. Returns ``(env, observations (N, obs_dim))``."""
    import gymnasium as gym

    info = env_info(env_id)
    n = len(seeds)
    if info.native_vector:
        env = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", render_mode=render_mode)
        env.reset(seed=0)
        states = _start_states(env_id, sorted(set(seeds)))
        index = {s: i for i, s in enumerate(sorted(set(seeds)))}
        env.unwrapped.state = states[[index[s] for s in seeds]].T.copy()
        obs = env.unwrapped.state.T.astype(np.float32)
    else:
        env = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", render_mode=render_mode)
        obs, _ = env.reset(seed=[int(s) for s in seeds])
    return env, np.asarray(obs, dtype=np.float32)


# -- policies ---------------------------------------------------------------------------------
def check_policy(net: nn.Module, stacked: dict[str, torch.Tensor], env_id: str) -> None:
    """Refuse policies that do not fit ``env_id``: the net must take its observation ``(obs_dim,)`` and
    output one value per action. The error names both shapes."""
    info = env_info(env_id)
    one = {k: v[0] for k, v in stacked.items()}
    obs = torch.zeros(1, info.obs_dim, dtype=next(iter(one.values())).dtype, device=next(iter(one.values())).device)
    try:
        out = functional_call(net, one, (obs,), strict=True)
    except (RuntimeError, ValueError, KeyError) as e:
        first = next((tuple(v.shape[1:]) for k, v in stacked.items() if v.dim() == 3), None)
        raise ValueError(f"the policy does not fit {env_id}: it takes inputs of its first weight {first}, the "
                         f"environment gives observations ({info.obs_dim},) ({str(e).splitlines()[0]})") from None
    if out.shape[-1] != info.actions:
        raise ValueError(f"the policy does not fit {env_id}: it outputs {tuple(out.shape[1:])} per observation, "
                         f"the environment has {info.actions} actions, so ({info.actions},)")


def greedy_actions(net: nn.Module, params: dict[str, torch.Tensor], obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each policy's greedy action on its own observations: ``params`` ``name -> (B, ...)``, ``obs``
    ``(B, E, obs_dim)`` -> actions ``(B, E)`` and whether each policy's outputs are finite ``(B,)``."""
    logits = vmap(lambda p, o: functional_call(net, p, (o,)), in_dims=(0, 0))(params, obs)
    return logits.argmax(-1), torch.isfinite(logits).flatten(1).all(1)


@torch.no_grad()
def rollout(net: nn.Module, stacked: dict[str, torch.Tensor], env_id: str, seeds: list[int]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every stacked policy on every seeded episode, all in one vector environment.

    Returns ``(returns (B, E), lengths (B, E), finite (B,))``: each episode's undiscounted return, its
    number of steps (environment interactions), and whether the policy's outputs stayed finite.
    """
    info = env_info(env_id)
    check_policy(net, stacked, env_id)
    b, e = next(iter(stacked.values())).shape[0], len(seeds)
    env, obs = make_vector_env(env_id, list(seeds) * b)  # env i: policy i // E, episode i % E
    device = next(iter(stacked.values())).device
    dtype = next((v.dtype for v in stacked.values() if v.is_floating_point()), torch.float32)
    returns = np.zeros(b * e)
    lengths = np.zeros(b * e, dtype=np.int64)
    alive = np.ones(b * e, dtype=bool)
    finite = torch.ones(b, dtype=torch.bool)
    rows = torch.arange(b)  # the policies still acting; the others' finished episodes take action 0
    params = stacked
    try:
        for _ in range(info.max_steps):
            live = torch.from_numpy(alive.reshape(b, e).any(1))
            if int(live.sum()) <= len(rows) // 2:  # fewer policies to run: drop the finished ones
                rows = torch.nonzero(live).flatten()
                params = {k: v[rows.to(v.device)] for k, v in stacked.items()}
            o = torch.from_numpy(obs).to(device=device, dtype=dtype).view(b, e, -1)[rows.to(device)]
            acting, ok = greedy_actions(net, params, o)
            finite[rows] &= ok.cpu()
            actions = torch.zeros(b, e, dtype=torch.long)
            actions[rows] = acting.cpu()
            obs, reward, terminated, truncated, _ = env.step(actions.flatten().numpy().astype(np.int64))
            returns += np.where(alive, reward, 0.0)
            lengths += alive
            alive &= ~(np.asarray(terminated) | np.asarray(truncated))
            if not alive.any():
                break
    finally:
        env.close()
    return (torch.from_numpy(returns).float().view(b, e), torch.from_numpy(lengths).view(b, e), finite)


# -- the task ---------------------------------------------------------------------------------
@dataclass
class ControlTask(Task):
    """A control problem: policies judged by their mean return over fixed seeded episodes.

    ``x_*`` hold each split's episode start observations ``(E, obs_dim)`` (so ``input_shape`` is the
    observation's); ``y_*`` are placeholders (zeros), since a return has no target. ``num_classes`` is
    the number of actions. ``evaluate`` scores a chunk of stacked policies itself; a policy's failures
    (the sets the novelty test compares) are the episodes it does not solve.
    """

    env_id: str = "CartPole-v1"
    episodes: int = 10
    seed: int = 0
    headline: str = "return"

    kind: ClassVar[str] = "control"
    metrics: ClassVar[dict[str, str]] = {"return": "higher"}

    def __post_init__(self) -> None:
        self.info = env_info(self.env_id)
        super().__post_init__()

    def output_size(self) -> int:
        return self.info.actions

    def seeds(self, split: str) -> list[int]:
        return episode_seeds(self.seed, split, self.episodes)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"task '{self.name}' is judged by a return, which has no gradient: build its zoo with "
                         "zoo.mode: policies (CMA-ES)")

    def batch_scores(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise ValueError(f"task '{self.name}' scores policies by playing episodes (ControlTask.evaluate), "
                         "not from outputs on fixed data")

    def evaluate(self, net: nn.Module, stacked: dict[str, torch.Tensor], split: str):
        """Mean return of every stacked policy over ``split``'s episodes, in one vectorized pass."""
        from weightgen.evaluate.batched import Scores

        returns, _, finite = rollout(net, stacked, self.env_id, self.seeds(split))
        return Scores({"return": returns.mean(1)}, returns < self.info.solved, finite)

    def summary(self) -> dict:
        return {**super().summary(), "env_id": self.env_id, "episodes": self.episodes, "solved": self.info.solved}


def control_task(name: str, env_id: str, episodes: int = 10, seed: int = 0) -> ControlTask:
    """A ``ControlTask`` on ``env_id`` with ``episodes`` seeded episodes per split."""
    if episodes < 1:
        raise ValueError(f"task '{name}': episodes must be at least 1, got {episodes}")
    xs = {s: torch.from_numpy(start_observations(env_id, episode_seeds(seed, s, episodes))) for s in SPLITS}
    ys = {s: torch.zeros(episodes, dtype=torch.long) for s in SPLITS}
    return ControlTask(name, xs["train"], ys["train"], xs["val"], ys["val"], xs["test"], ys["test"],
                       env_id=env_id, episodes=episodes, seed=seed)


@TASKS.register("cartpole")
def cartpole(episodes: int = 10, seed: int = 0) -> ControlTask:
    """gymnasium's CartPole-v1: returns up to 500, 475 counts as solved; ``episodes`` per split."""
    return control_task("cartpole", "CartPole-v1", episodes, seed)


@TASKS.register("acrobot")
def acrobot(episodes: int = 10, seed: int = 0) -> ControlTask:
    """gymnasium's Acrobot-v1: returns from -500 up, -100 counts as solved; ``episodes`` per split."""
    return control_task("acrobot", "Acrobot-v1", episodes, seed)


@TASKS.register("control")
def control(env: str = "CartPole-v1", episodes: int = 10, seed: int = 0) -> ControlTask:
    """Any supported environment by its gymnasium id (``env``)."""
    return control_task("control", env, episodes, seed)
