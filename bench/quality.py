"""Aggregation quality and cost (prints figures; not a test).

1. Simulated members (seeded confusion-matrix annotators: one good, fair ones, one biased, one
   adversarial, one always-same): every aggregator's online posterior against crowd-kit's own fit
   on the same votes (parity), accuracy against majority and against the best single member.
2. Request-path cost: posterior over 10 votes, per aggregator (target <= 50 microseconds).
3. Refit time on 100,000 votes, per algorithm.
4. With --real (the local pool of real small models, deploy/local-pool.yaml): per-member against
   crowd accuracy on held-out labeled sentences, ECE before and after calibration on gold from the
   dev half, and the cost saved by escalating only uncertain items against asking the strongest
   member for every item.

Run: .venv/bin/python bench/quality.py [--refit-votes 100000] [--real]
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ensembles.aggregators import REGISTRY, FitData, get_aggregator, pick  # noqa: E402
from ensembles.aggregators.crowdkit_frame import frame  # noqa: E402
from ensembles.simulation import SimulatedWorker, simulate, standard_pool  # noqa: E402
from ensembles.votes import Vote  # noqa: E402

LABELS = ["positive", "negative", "neutral"]


def by_item(triples: list[tuple[str, str, str]]) -> dict[str, list[Vote]]:
    out: dict[str, list[Vote]] = defaultdict(list)
    for item, member, label in triples:
        out[item].append(Vote(member=member, label=label))
    return out


def simulated(n_items: int, seed: int) -> None:
    import crowdkit.aggregation as ck

    pools = {"standard (good, fair, biased, adversary, lazy)": standard_pool(),
             "skewed (3 weak members share a bias)": [SimulatedWorker("a", 0.55, bias="negative"),
                                                      SimulatedWorker("b", 0.55, bias="negative"),
                                                      SimulatedWorker("c", 0.6, bias="negative"), SimulatedWorker("d", 0.8)]}
    crowdkit_of = {"dawid_skene": ck.DawidSkene, "one_coin": ck.OneCoinDawidSkene, "glad": ck.GLAD,
                   "mace": lambda: ck.MACE(n_restarts=3, n_iter=50, random_state=0), "wawa": ck.Wawa,
                   "zero_based_skill": ck.ZeroBasedSkill}
    for title, pool in pools.items():
        truth, triples = simulate(pool, LABELS, n_items, seed=seed, class_weights=[0.5, 0.3, 0.2])
        items = by_item(triples)
        best_name, best_acc = max(((a.name, sum(l == truth[i] for i, m, l in triples if m == a.name) / n_items)
                                   for a in pool), key=lambda x: x[1])
        print(f"\nSimulated pool: {title}; {n_items} items, {len(triples)} votes; best member {best_name} "
              f"{best_acc:.3f}")
        print("| aggregator | accuracy | vs best member | same labels as crowd-kit |\n|---|---|---|---|")
        for name in REGISTRY:
            agg = get_aggregator(name)
            params = agg.fit(FitData.of(triples, LABELS))
            ours = {i: LABELS[pick(agg.posterior(v, LABELS, params))] for i, v in items.items()}
            acc = sum(ours[i] == t for i, t in truth.items()) / n_items
            parity = "n/a (no fit)"
            if name in crowdkit_of:
                model = crowdkit_of[name]().fit(frame(triples))
                theirs = model.labels_ if hasattr(model, "labels_") else model.predict(frame(triples))
                parity = f"{sum(ours[i] == theirs[i] for i in truth) / n_items:.3f}"
            print(f"| {name} | {acc:.3f} | {acc - best_acc:+.3f} | {parity} |")


def posterior_cost() -> None:
    truth, triples = simulate(standard_pool() + [SimulatedWorker(f"x{i}", 0.7) for i in range(4)], LABELS, 200, seed=3)
    items = list(by_item(triples).values())
    print("\nRequest-path posterior over 10 votes (3 labels), microseconds per call (soft votes: every member's"
          " label bias divided out first, as after a refit on soft votes):")
    print("| aggregator | hard votes | soft votes |\n|---|---|---|")
    for name in REGISTRY:
        agg = get_aggregator(name)
        hard = items[0]
        gold = dict(list(truth.items())[:50])  # so that stacking and auto publish their fitted coefficients
        params = {**(agg.fit(FitData.of(triples, LABELS, gold)) or {}), "biases": {v.member: [0.5, 0.3, 0.2] for v in hard}}
        soft = [Vote(v.member, v.label, probs=(0.7, 0.2, 0.1)) for v in hard]
        agg.posterior(hard, LABELS, params)  # compile the parameters once, as the request path does
        n = 20000
        t_hard = timeit.timeit(lambda: agg.posterior(hard, LABELS, params), number=n) / n * 1e6
        t_soft = timeit.timeit(lambda: agg.posterior(soft, LABELS, params), number=n) / n * 1e6
        print(f"| {name} | {t_hard:.1f} | {t_soft:.1f} |")


def refit_cost(n_votes: int) -> None:
    pool = standard_pool()
    truth, triples = simulate(pool, LABELS, n_votes // len(pool), seed=5)
    print(f"\nRefit on {len(triples):,} votes ({len(truth):,} items), seconds (background worker, off the request path):")
    print("| algorithm | fit s |\n|---|---|")
    for name in REGISTRY:
        started = time.perf_counter()
        get_aggregator(name).fit(FitData.of(triples, LABELS, dict(list(truth.items())[:50])))
        print(f"| {name} | {time.perf_counter() - started:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--refit-votes", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--real", action="store_true", help="also measure the real local pool (starts it)")
    args = parser.parse_args()
    simulated(args.items, args.seed)
    posterior_cost()
    refit_cost(args.refit_votes)
    if args.real:
        from bench.quality_real import real_pool

        real_pool()


if __name__ == "__main__":
    main()
