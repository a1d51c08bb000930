"""``python -m autoballoon_sim``: run policies over demand traces and compare them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from autoballoon_sim import workload
from autoballoon_sim.model import ModelParams
from autoballoon_sim.report import markdown, print_rich
from autoballoon_sim.runner import COMPARE_POLICIES, PolicyMissing, RunSpec, compare, run, summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m autoballoon_sim",
        description="Simulate a KVM host with ballooned guests under a policy.")
    parser.add_argument("--trace", default="steady",
                        help=f"shipped trace ({', '.join(workload.shipped())}) or a .json file")
    parser.add_argument("--policy", default="autoballoon", help="policy name (plugin registry)")
    parser.add_argument("--guests", type=int, default=50)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--step", type=float, default=1.0, help="simulated seconds per step")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-deflate-on-oom", action="store_true",
                        help="guests without deflate-on-oom: OOM kills instead")
    parser.add_argument("--no-free-page-reporting", action="store_true")
    parser.add_argument("--plot", type=Path, help="write a PNG plot here")
    parser.add_argument("--compare", action="store_true",
                        help="every policy over every shipped trace; print a table")
    parser.add_argument("--policies", default=",".join(COMPARE_POLICIES),
                        help="policies for --compare (comma separated)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel runs for --compare")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    params = ModelParams(deflate_on_oom=not args.no_deflate_on_oom,
                         free_page_reporting=not args.no_free_page_reporting)
    common = {"guests": args.guests, "hours": args.hours, "dt": args.step, "seed": args.seed,
              "params": params}
    started = time.perf_counter()
    if args.compare:
        policies = [p for p in args.policies.split(",") if p]
        results, problems = compare(policies, jobs=args.jobs, **common)
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        title = (f"{args.guests} guests, {args.hours:g} h simulated, step {args.step:g} s, "
                 f"seed {args.seed}")
    else:
        try:
            results = [run(RunSpec(policy=args.policy, trace=args.trace, **common))]
        except (PolicyMissing, workload.TraceError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        title = (f"{args.policy} on {args.trace}: {args.guests} guests, {args.hours:g} h, "
                 f"step {args.step:g} s")
    wall = time.perf_counter() - started
    if args.json:
        print(json.dumps([summary(r) for r in results], indent=2, default=str))
    elif args.markdown:
        print(markdown(results))
    else:
        print_rich(results, title)
    for result in results:
        print(f"{result.spec.policy}/{result.spec.trace}: {result.steps} steps of "
              f"{result.spec.dt:g} s for {result.spec.guests} guests in "
              f"{result.wall_seconds:.1f} s wall", file=sys.stderr)
    print(f"total wall time {wall:.1f} s", file=sys.stderr)
    if args.plot is not None and results:
        from autoballoon_sim.plot import plot_compare, plot_runs

        path = plot_compare(results, args.plot) if args.compare else plot_runs(
            results, args.plot, title)
        print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
