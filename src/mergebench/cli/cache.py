"""``mergebench cache verify|gc``: check the artifact cache's files, remove leftovers and unused artifacts."""

from __future__ import annotations

import argparse
import sys

from mergebench.errors import UsageError


def _cache(args: argparse.Namespace):
    from mergebench.cache import ArtifactCache

    cache = ArtifactCache(args.cache_dir, sweep=False)  # a dry run deletes nothing, not even at start-up
    if not cache.root.is_dir():
        raise UsageError(f"no artifact cache at {cache.root}; pass --cache-dir DIR (default $MERGEBENCH_CACHE "
                         "or ~/.cache/mergebench)")
    unknown = sorted(set(args.stage or ()) - set(cache.stages()))
    if unknown:
        raise UsageError(f"no stage {unknown[0]!r} in {cache.root}; stages there: {', '.join(cache.stages()) or 'none'}")
    return cache


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e7 else f"{size / 1e6:.2f} MB"


def _folders(count: int) -> str:
    return f"{count} folder{'' if count == 1 else 's'}"


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from mergebench.cache.integrity import check, describe

    cache = _cache(args)
    counts = {"ok": 0, "corrupt": 0, "unverified": 0}
    hashed, seconds, corrupt = 0, 0.0, []
    for path in cache.artifacts(args.stage or ()):
        verdict = check(path)
        counts[verdict.status] += 1
        hashed, seconds = hashed + verdict.bytes_hashed, seconds + verdict.seconds
        name = describe(path).removeprefix("cached artifact ")
        if verdict.status == "ok":
            print(f"OK          {name}")
        elif verdict.status == "corrupt":
            print(f"CORRUPT     {name}: {'; '.join(verdict.problems)}")
            corrupt.append(path)
        else:
            print(f"UNVERIFIED  {name}: no manifest (built before mergebench recorded file hashes)")
    print(f"{sum(counts.values())} artifacts in {cache.root}: {counts['ok']} OK, {counts['corrupt']} corrupt, "
          f"{counts['unverified']} unverified ({_gb(hashed)} hashed in {seconds:.1f}s)")
    for path in corrupt:
        print(f"delete {path} to have it rebuilt on the next run", file=sys.stderr)
    return 1 if corrupt else 0


def cmd_cache_gc(args: argparse.Namespace) -> int:
    from mergebench.cache.gc import execute, plan

    if args.older_than is not None and args.older_than < 0:
        raise UsageError("--older-than takes a number of days >= 0")
    cache = _cache(args)
    items = plan(cache, older_than_days=args.older_than, stages=args.stage or None)
    doomed = [item for item in items if item.remove]
    for item in items:
        where = item.path.relative_to(cache.root)
        print(f"{'remove' if item.remove else 'keep  '}  {_gb(item.bytes) if item.remove else '':>10}  {where}  "
              f"({item.kind}: {item.reason})")
    total = sum(item.bytes for item in doomed)
    if not args.yes:
        hint = "" if args.older_than is not None or args.stage else \
            "; add --older-than DAYS or --stage STAGE to also remove unused artifacts"
        print(f"dry run: {_folders(len(doomed))}, {_gb(total)} would be removed from {cache.root}; pass --yes to "
              f"remove them{hint}")
        return 0
    removed = execute(cache, doomed)
    kept = len(doomed) - len(removed)
    print(f"removed {_folders(len(removed))}, {_gb(sum(item.bytes for item in removed))} freed in {cache.root}"
          + (f"; kept {kept} used or locked since the listing" if kept else ""))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="check the artifact cache's files, remove leftovers and unused artifacts")
    actions = p.add_subparsers(dest="action", required=True, metavar="{verify,gc}")
    q = actions.add_parser("verify", help="check every artifact's files against the SHA-256 manifest of its build "
                                          "(exit 1 if one is corrupt)")
    q.add_argument("--stage", action="append", metavar="STAGE", help="only this stage (base, expert, merged, ...)")
    q.add_argument("--cache-dir", default=None, help="default $MERGEBENCH_CACHE or ~/.cache/mergebench")
    q.set_defaults(func=cmd_cache_verify)
    q = actions.add_parser("gc", help="list (or with --yes remove) killed builds' leftovers and, if asked, unused artifacts")
    q.add_argument("--older-than", type=float, metavar="DAYS",
                   help="also artifacts and resumable work folders not used for DAYS days")
    q.add_argument("--stage", action="append", metavar="STAGE",
                   help="also artifacts of this stage (of any age unless --older-than); repeatable")
    q.add_argument("--yes", action="store_true", help="remove what is listed (default: a dry run)")
    q.add_argument("--cache-dir", default=None, help="default $MERGEBENCH_CACHE or ~/.cache/mergebench")
    q.set_defaults(func=cmd_cache_gc)
