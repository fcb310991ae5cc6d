"""GraphPruning's reinforcement-learning search: a DDPG agent (AMC's protocol) walks the coupled groups in order and
picks each one's width ratio; its state is the group's embedding from the trained GCN aggregator plus AMC's dynamic
entries, its actions are clipped so the groups still to come can meet the MACs budget, and its reward is the
validation accuracy of the generated network after BatchNorm recalibration (no weight is trained during the search;
never the test split)."""
from __future__ import annotations

import copy
import random
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...pruning import LatencyTable
from ...pruning.speedup import check_number
from ..pruningnet.search import SearchResult, _batches, search_result


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, outputs))


class DDPGAgent:
    """Actor ``μ(s) ∈ [0, 1]`` and critic ``Q(s, a)`` (two hidden layers of ``hidden`` each) with target copies
    updated softly (``tau``). The reward comes at an episode's last step with discount 1, so every step's return is
    the episode's reward (what AMC's "every transition gets the final reward" means, without counting it twice);
    rewards are centred by a moving average, as AMC does."""

    def __init__(self, state_size: int, hidden: int = 300, lr_actor: float = 1e-4, lr_critic: float = 1e-3,
                 tau: float = 0.01, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)))
            self.actor = nn.Sequential(_mlp(state_size, hidden, 1), nn.Sigmoid())
            self.critic = _mlp(state_size + 1, hidden, 1)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.tau, self.baseline = tau, None

    @torch.no_grad()
    def act(self, state: torch.Tensor) -> float:
        return float(self.actor(state[None])[0, 0])

    def update(self, batch: list[tuple[torch.Tensor, float, float, torch.Tensor, bool]]) -> tuple[float, float]:
        s = torch.stack([b[0] for b in batch])
        a = torch.tensor([[b[1]] for b in batch])
        s2 = torch.stack([b[3] for b in batch])
        done = torch.tensor([[float(b[4])] for b in batch])
        r = torch.tensor([[b[2]] for b in batch]) - done * (self.baseline or 0.0)  # the reward is at the last step
        with torch.no_grad():
            target = r + (1 - done) * self.critic_target(torch.cat([s2, self.actor_target(s2)], 1))
        critic_loss = nn.functional.mse_loss(self.critic(torch.cat([s, a], 1)), target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(torch.cat([s, self.actor(s)], 1)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        for net, target_net in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            for p, q in zip(net.parameters(), target_net.parameters()):
                q.data.mul_(1 - self.tau).add_(self.tau * p.data)
        return float(critic_loss.detach()), float(actor_loss.detach())

    def observe_reward(self, reward: float, momentum: float = 0.5) -> None:
        self.baseline = reward if self.baseline is None else momentum * self.baseline + (1 - momentum) * reward


def clip_action(model, gene: list[int], step: int, index: int, lowest: int, budget: float, floor: float = 0.0,
                latency_table: LatencyTable | None = None) -> int:
    """AMC's action wall, on both sides: the grid index for group ``step`` nearest to ``index`` such that the groups
    after it can still land the MACs in ``[floor, budget]`` — at most ``budget`` with all of them at ``lowest``, at
    least ``floor`` with all of them at full width (the search checks up front that the all-``lowest`` gene meets
    the budget, so the upper wall can always be kept)."""
    top, rest = len(model.config.width_ratios) - 1, len(gene) - step - 1

    def cost(i: int, after: int) -> float:  # MACs, or the latency table's seconds
        return model.cost(gene[:step] + [i] + [after] * rest, latency_table)

    i = index
    while i > lowest and cost(i, lowest) > budget:
        i -= 1
    while i < top and cost(i, top) < floor and cost(i + 1, lowest) <= budget:
        i += 1
    return i


def ddpg_search(model, data: Any, speed_up: float, episodes: int = 300, warmup: int = 100, window: float = 0.03,
                lowest_ratio: float = 0.2, noise: float = 0.5, noise_decay: float = 0.95, batch_size: int = 64,
                updates_per_episode: int | None = None, recalibration_samples: int = 2000,
                eval_samples: int | None = None, eval_batch_size: int = 250, seed: int = 0,
                disable_tqdm: bool = False, latency_table: LatencyTable | None = None) -> SearchResult:
    """DDPG over the coupled groups of ``model`` (a :class:`GraphPruningModel`) for MACs <= full / ``speed_up`` (or
    the latency a :class:`~hf_metaprune.LatencyTable` measured on the base network estimates: ``latency_table``).

    ``warmup`` episodes of uniformly random actions fill the replay buffer (``100 × groups`` transitions), then
    ``episodes`` episodes act with truncated-normal exploration around the actor (``noise``, decaying by
    ``noise_decay`` per episode) and train the agent (``updates_per_episode`` minibatches, default one per group).
    Actions are preserve ratios in ``[lowest_ratio, 1]`` snapped down to the width grid and clipped by the action
    wall (:func:`clip_action`) so that the MACs land in ``[(1 − window)·M/speed_up, M/speed_up]`` (``M``: the full
    network's), the window MetaPruning's evolutionary search uses, where the grid allows. State of group ``t``: its
    GCN embedding for the gene so far (groups not yet decided at full width), ``t / groups``, MACs removed so far and
    MACs still ahead (fractions of the full network's), and the previous action. Reward: accuracy of the generated network on ``eval_samples`` validation images after
    recalibrating BatchNorm; a gene is never evaluated twice. Seeded: the same seed gives the same search.
    """
    speed_up = check_number("speed_up", speed_up, 1.0, low_inclusive=False)
    lowest_ratio = check_number("lowest_ratio", lowest_ratio, 0.0, 1.0, low_inclusive=False)
    window = check_number("window", window, 0.0, 1.0)
    noise = check_number("noise", noise, 0.0)
    noise_decay = check_number("noise_decay", noise_decay, 0.0, 1.0)
    for name, value, low in (("episodes", episodes, 1), ("warmup", warmup, 0), ("batch_size", batch_size, 1),
                             ("recalibration_samples", recalibration_samples, 1),
                             ("eval_batch_size", eval_batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    start = time.time()
    ratios = model.config.width_ratios
    lowest = next((i for i, r in enumerate(ratios) if r >= lowest_ratio - 1e-9), len(ratios) - 1)
    top, n = len(ratios) - 1, model.num_genes

    def cost(gene) -> float:
        return model.cost(gene, latency_table)

    full = cost(model.full_gene())
    budget = full / speed_up
    if cost([lowest] * n) > budget:
        raise ValueError(f"speed_up={speed_up:g} cannot be met: every group at the lowest ratio {ratios[lowest]} "
                         f"(lowest_ratio={lowest_ratio}) reaches only {full / cost([lowest] * n):.2f}x; lower "
                         "lowest_ratio or the target")
    recal, evals = _batches(data, recalibration_samples, eval_samples, eval_batch_size, seed)
    rng = random.Random(seed)
    noise_gen = torch.Generator().manual_seed(seed)
    state_size = model.config.gcn_hidden_size + 4
    agent = DDPGAgent(state_size, seed=seed)
    replay: list[tuple] = []
    capacity = 100 * n
    updates = n if updates_per_episode is None else updates_per_episode
    fitness: dict[tuple[int, ...], float] = {}
    history = []
    was_training = model.training
    model.eval()

    def state(gene: list[int], step: int, previous: float) -> torch.Tensor:
        with torch.no_grad():
            embedding = model.node_embeddings(gene)[step].detach().cpu().float()
        widest = cost(gene[:step] + [top] * (n - step))  # the groups to come at full width
        removed, ahead = (full - widest) / full, (widest - cost(gene[:step] + [lowest] * (n - step))) / full
        return torch.cat([embedding, torch.tensor([step / n, removed, ahead, previous])])

    bar = tqdm(range(warmup + episodes), desc="DDPG search", disable=disable_tqdm)
    sigma = noise
    for episode in bar:
        gene, previous, transitions = [top] * n, 1.0, []
        for step in range(n):
            s = state(gene, step, previous)
            if episode < warmup:
                action = rng.random()
            else:
                action = _truncated_normal(agent.act(s), sigma, noise_gen)
            ratio = lowest_ratio + action * (1 - lowest_ratio)
            index = max((i for i, r in enumerate(ratios) if r <= ratio + 1e-9), default=lowest)
            index = max(index, lowest)
            gene[step] = clip_action(model, gene, step, index, lowest, budget, budget * (1 - window), latency_table)
            taken = (ratios[gene[step]] - lowest_ratio) / max(1 - lowest_ratio, 1e-9)  # the clipped action
            previous = ratios[gene[step]]
            transitions.append((s, min(max(taken, 0.0), 1.0)))
        key = tuple(gene)
        if key not in fitness:
            fitness[key] = model.evaluate_gene(list(key), recal, evals)
        reward = fitness[key]
        for step, (s, a) in enumerate(transitions):
            last = step == n - 1
            s2 = transitions[step + 1][0] if not last else s
            replay.append((s, a, reward if last else 0.0, s2, last))
        del replay[:max(0, len(replay) - capacity)]
        agent.observe_reward(reward)
        if episode >= warmup:
            sigma *= noise_decay
            for _ in range(updates):
                agent.update(rng.sample(replay, min(batch_size, len(replay))))
        best = max(fitness, key=lambda g: fitness[g])
        history.append({"episode": episode, "reward": reward, "best": fitness[best], "sigma": sigma,
                        "evaluated": len(fitness)})
        bar.set_postfix(best=f"{fitness[best]:.4f}", evaluated=len(fitness))
    model.train(was_training)
    return search_result(model, fitness, recal, history, start, latency_table)


def _truncated_normal(mean: float, sigma: float, generator: torch.Generator) -> float:
    """A draw from N(mean, sigma) truncated to [0, 1] (rejection; the mean itself when sigma is 0)."""
    if sigma <= 0:
        return min(max(mean, 0.0), 1.0)
    for _ in range(100):
        x = mean + sigma * float(torch.randn((), generator=generator))
        if 0.0 <= x <= 1.0:
            return x
    return min(max(mean, 0.0), 1.0)
