"""MetaPruning's evolutionary search over genes under a MACs budget, with the PruningNet's generated weights as the
fitness proxy (validation accuracy after BatchNorm recalibration; never the test split)."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ...pruning import LatencyTable, PruneResult, recalibration_batches
from ...pruning.speedup import check_number


@dataclass
class SearchResult:
    gene: list[int]
    widths: list[int]
    macs: float
    speed_up: float
    val_accuracy: float
    result: PruneResult  # the gene's pruned network with generated, recalibrated weights
    evaluated: int  # distinct genes whose fitness was measured
    history: list[dict[str, float]] = field(default_factory=list)  # per iteration: best and top-k mean fitness
    seconds: float = 0.0
    latency_speed_up: float | None = None  # estimated by the LatencyTable the search was constrained by, if any


def evolutionary_search(pruningnet, data: Any, speed_up: float, window: float = 0.03, num_iterations: int = 20,
                        population: int = 50, top_k: int = 50, num_parents: int = 10, mutations: int = 25,
                        crossovers: int = 25, mutation_prob: float = 0.1, recalibration_samples: int = 2000,
                        eval_samples: int | None = None, batch_size: int = 250, seed: int = 0,
                        disable_tqdm: bool = False, latency_table: LatencyTable | None = None) -> SearchResult:
    """Find the gene with the best proxy accuracy among those whose MACs lie in
    ``[(1 − window)·M/speed_up, M/speed_up]`` (``M``: the full network's MACs) — or whose latency does, estimated by
    ``latency_table`` (a :class:`~hf_metaprune.LatencyTable` measured on the base network).

    MetaPruning's loop and defaults: a random valid population; every iteration keeps the global ``top_k`` by
    fitness, takes parents from its best ``num_parents``, makes ``mutations`` children (each index re-drawn with
    probability ``mutation_prob``) and ``crossovers`` children (each index from either parent), fills up with
    random genes; invalid genes are rejected when generated and no gene is evaluated twice. Fitness: accuracy on
    ``eval_samples`` validation images (all by default) after recalibrating BatchNorm on ``recalibration_samples``
    training images.
    """
    speed_up = check_number("speed_up", speed_up, 1.0)
    window = check_number("window", window, 0.0, 1.0, low_inclusive=False)
    for name, value, low in (("num_iterations", num_iterations, 1), ("population", population, 1),
                             ("top_k", top_k, 1), ("num_parents", num_parents, 1), ("mutations", mutations, 0),
                             ("crossovers", crossovers, 0), ("recalibration_samples", recalibration_samples, 1),
                             ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    mutation_prob = check_number("mutation_prob", mutation_prob, 0.0, 1.0, low_inclusive=False)
    start = time.time()
    rng = random.Random(seed)

    def cost(gene) -> float:
        return pruningnet.cost(gene, latency_table)

    full = cost(pruningnet.full_gene())
    high, low = full / speed_up, full / speed_up * (1 - window)
    top_index = len(pruningnet.config.width_ratios) - 1
    smallest = cost([0] * pruningnet.num_genes)
    if smallest > high:
        raise ValueError(f"speed_up={speed_up:g} cannot be met: even the narrowest gene (every ratio "
                         f"{pruningnet.config.width_ratios[0]}) reaches only {full / smallest:.2f}x")

    def valid(gene: tuple[int, ...]) -> bool:
        return low <= cost(gene) <= high

    def random_gene() -> tuple[int, ...]:
        return _random_gene(rng, top_index, pruningnet.num_genes)

    seen: set[tuple[int, ...]] = set()

    def fresh(make, count: int, attempts: int) -> list[tuple[int, ...]]:
        out = []
        for _ in range(attempts):
            if len(out) == count:
                break
            gene = make()
            if gene not in seen and valid(gene):
                seen.add(gene)
                out.append(gene)
        return out

    candidates = fresh(random_gene, population, attempts=2000 * population)
    if not candidates:
        raise ValueError(f"no gene among {2000 * population} random draws has {'latency' if latency_table else 'MACs'}"
                         f" within {window:.0%} below 1/{speed_up:g} of the full network's; widen the window or "
                         "change width_ratios")
    recal, evals = _batches(data, recalibration_samples, eval_samples, batch_size, seed)
    fitness: dict[tuple[int, ...], float] = {}
    history = []
    was_training = pruningnet.training
    pruningnet.eval()
    bar = tqdm(range(num_iterations), desc="evolutionary search", disable=disable_tqdm)
    for iteration in bar:
        for gene in candidates:
            fitness[gene] = pruningnet.evaluate_gene(gene, recal, evals)
        ranked = sorted(fitness, key=lambda g: -fitness[g])[:top_k]
        history.append({"iteration": iteration, "evaluated": len(fitness), "best": fitness[ranked[0]],
                        "top_k_mean": sum(fitness[g] for g in ranked) / len(ranked)})
        bar.set_postfix(best=f"{fitness[ranked[0]]:.4f}", evaluated=len(fitness))
        if iteration == num_iterations - 1:
            break
        parents = ranked[:num_parents]

        def mutate() -> tuple[int, ...]:
            parent = rng.choice(parents)
            return tuple((i + rng.randint(1, top_index)) % (top_index + 1) if rng.random() < mutation_prob else i
                         for i in parent)

        def cross() -> tuple[int, ...]:
            if len(parents) < 2:
                return rng.choice(parents)
            a, b = rng.sample(parents, 2)
            return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

        candidates = fresh(mutate, mutations, 10 * max(mutations, 1))
        candidates += fresh(cross, crossovers, 10 * max(crossovers, 1))
        candidates += fresh(random_gene, max(0, population - len(candidates)), 2000 * population)
    pruningnet.train(was_training)
    return search_result(pruningnet, fitness, recal, history, start, latency_table)


def search_result(pruningnet, fitness: dict[tuple[int, ...], float], recal: list, history: list[dict],
                  start: float, latency_table: LatencyTable | None = None) -> SearchResult:
    """What a finished search returns: its best gene's network, generated and BatchNorm-recalibrated."""
    best = max(fitness, key=lambda g: fitness[g])
    macs = pruningnet.macs(best)
    latency_speed_up = None if latency_table is None else \
        pruningnet.cost(pruningnet.full_gene(), latency_table) / pruningnet.cost(best, latency_table)
    return SearchResult(gene=list(best), widths=pruningnet.widths(best), macs=macs,
                        speed_up=pruningnet.macs(pruningnet.full_gene()) / macs, val_accuracy=fitness[best],
                        result=pruningnet.generate(list(best), recal), evaluated=len(fitness), history=history,
                        seconds=time.time() - start, latency_speed_up=latency_speed_up)


def _random_gene(rng: random.Random, top_index: int, num_genes: int) -> tuple[int, ...]:
    """An overall width drawn at random, each index scattered around it (uniform indices cluster at one MACs level
    and rarely meet a narrow window far from it)."""
    level = rng.random() * top_index
    return tuple(min(top_index, max(0, round(rng.gauss(level, top_index / 5)))) for _ in range(num_genes))


def sample_genes(pruningnet, speed_up: float, count: int, window: float = 0.03, seed: int = 0,
                 attempts: int = 200_000) -> list[list[int]]:
    """``count`` distinct random genes whose MACs lie in the search's window for ``speed_up`` (the distribution of
    the search's initial population): the structures a proxy-fidelity check ranks."""
    rng = random.Random(seed)
    full = pruningnet.macs(pruningnet.full_gene())
    high, low = full / speed_up, full / speed_up * (1 - window)
    top_index = len(pruningnet.config.width_ratios) - 1
    found: list[list[int]] = []
    for _ in range(attempts):
        gene = list(_random_gene(rng, top_index, pruningnet.num_genes))
        if gene not in found and low <= pruningnet.macs(gene) <= high:
            found.append(gene)
            if len(found) == count:
                return found
    raise ValueError(f"sample_genes: found {len(found)} of {count} genes within {window:.0%} below "
                     f"{speed_up:g}x MACs in {attempts} draws; widen the window or ask for fewer")


def _batches(data: Any, recalibration_samples: int, eval_samples: int | None, batch_size: int,
             seed: int) -> tuple[list, list]:
    """Recalibration batches and the validation batches every gene is scored on."""
    _check_data(data)
    recal = recalibration_batches(data, recalibration_samples, batch_size, seed)
    n_eval = len(data.validation) if eval_samples is None else min(eval_samples, len(data.validation))
    if n_eval == 0:
        raise ValueError("the search needs validation images (the fitness); data.validation is empty")
    collate = data.collator(augment=False)
    evals = [collate([data.validation[j] for j in range(i, min(i + batch_size, n_eval))])
             for i in range(0, n_eval, batch_size)]
    return recal, evals


def _check_data(data: Any) -> None:
    if not all(hasattr(data, a) for a in ("train", "validation", "collator")):
        raise TypeError(f"data must be a ClassificationData (hf_metaprune.load_image_classification), got "
                        f"{type(data).__name__}")
