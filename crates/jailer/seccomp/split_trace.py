#!/usr/bin/env python3
"""Splits `strace -f -X verbose` logs of the ember binary per thread kind.

Usage: split_trace.py [--check x86_64.json] TRACE...

A thread is classified by the name it gives itself (PR_SET_NAME):
`fc_vcpu <N>` is a vcpu thread, `ember_api` an api thread, and the first
thread of the log (the process) is the vmm thread. Only the system calls made
after the point where the filter is installed count:

- vcpu: from the thread's first KVM_RUN (the filter goes in right before it);
- vmm:  from the main thread's last clone (the filter goes in right after the
        vCPU threads are started; in API mode the VM starts after the API
        thread and pre-boot configuration, so the last clone is the last vCPU);
- api:  from the thread's first accept4/epoll_wait (when an api thread exists).

Prints, per kind, every system call with its count and the argument values
that the JSON filter constrains (ioctl requests, mmap/mprotect protections,
socket families, ...). With --check, also compares the traces with the JSON
filter file: a traced call the filter would refuse is an error (exit 1); a
call the filter allows but no trace made is listed as headroom, which the
filter's `comment` must justify.
"""

import json
import re
import sys
from collections import defaultdict

LINE = re.compile(r"^(\d+)\s+(.*)$")
CALL = re.compile(r"^([a-z0-9_]+)\((.*)$")
NUMBER = re.compile(r"^(-?(?:0x[0-9a-f]+|\d+))")

# Argument index (0-based) recorded per system call, as in the JSON filter.
CONSTRAINED_ARGS = {
    "ioctl": 1,
    "mmap": 2,
    "mprotect": 2,
    "socket": 0,
    "fcntl": 1,
    "futex": 1,
    "madvise": 2,
    "prctl": 0,
    "rt_sigprocmask": 0,
    "sigaltstack": None,
}


def split_args(text):
    """Splits the top level of a strace argument list on commas."""
    args, depth, current, quoted = [], 0, "", False
    prev = ""
    for ch in text:
        if quoted:
            current += ch
            if ch == '"' and prev != "\\":
                quoted = False
        elif ch == '"':
            quoted = True
            current += ch
        elif ch in "{[(":
            depth += 1
            current += ch
        elif ch in "}])":
            if depth == 0:
                args.append(current.strip())
                return args
            depth -= 1
            current += ch
        elif ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += ch
        prev = ch
    args.append(current.strip())
    return args


def arg_value(arg):
    match = NUMBER.match(arg)
    if not match:
        return arg
    text = match.group(1)
    value = int(text, 16) if "0x" in text else int(text)
    comment = re.search(r"/\* (.*?) \*/", arg)
    return (value, comment.group(1) if comment else "")


def classify(path):
    """Returns {kind: {syscall: [count, {arg values}]}} for one trace."""
    threads = {}  # tid -> kind
    armed = {}  # tid -> filter installed
    main = None
    events = []  # (tid, name, args) in order
    with open(path, encoding="utf-8", errors="replace") as log:
        for raw in log:
            match = LINE.match(raw.rstrip("\n"))
            if not match:
                continue
            tid, rest = int(match.group(1)), match.group(2)
            if main is None:
                main = tid
                threads[tid] = "vmm"
            call = CALL.match(rest)
            if not call:
                continue  # signals, exits, "<... resumed>" halves
            events.append((tid, call.group(1), call.group(2)))

    vcpu_tids = set()
    for tid, name, args in events:
        if name == "prctl" and "PR_SET_NAME" in args:
            thread_name = re.search(r'"([^"]*)"', args).group(1)
            if thread_name.startswith("fc_vcpu "):
                vcpu_tids.add(tid)
                threads[tid] = "vcpu"
            elif thread_name == "ember_api":
                threads[tid] = "api"
    armed_after = len(events)
    for index, (tid, name, _args) in enumerate(events):
        if tid == main and name in ("clone", "clone3"):
            armed_after = index

    result = defaultdict(lambda: defaultdict(lambda: [0, set()]))
    for index, (tid, name, args) in enumerate(events):
        kind = threads.get(tid, "unknown")
        if kind == "vmm":
            if index <= armed_after:
                continue
        elif kind == "vcpu":
            if not armed.get(tid):
                if name == "ioctl" and "KVM_RUN" in args:
                    armed[tid] = True
                else:
                    continue
        elif kind == "api":
            if not armed.get(tid):
                if name in ("accept4", "epoll_wait"):
                    armed[tid] = True
                else:
                    continue
        entry = result[kind][name]
        entry[0] += 1
        index_of_arg = CONSTRAINED_ARGS.get(name)
        if index_of_arg is not None:
            parts = split_args(args)
            if index_of_arg < len(parts):
                entry[1].add(arg_value(parts[index_of_arg]))
    return result


def merge(into, other):
    for kind, calls in other.items():
        for name, (count, values) in calls.items():
            into[kind][name][0] += count
            into[kind][name][1] |= values


def allowed(rules, name, values):
    """Which traced argument values the JSON rules for `name` would refuse."""
    if name not in rules:
        return None
    conditions = rules[name]
    if any(not c for c in conditions):
        return set()  # unconditional rule
    refused = set()
    for value in values:
        number = value[0] if isinstance(value, tuple) else None
        ok = False
        for rule in conditions:
            if number is None:
                break
            if all(test(cond, number) for cond in rule):
                ok = True
                break
        if not ok:
            refused.add(value)
    return refused


def test(cond, number):
    arg = cond["val"]
    number &= 0xFFFFFFFF if cond["type"] == "dword" else 0xFFFFFFFFFFFFFFFF
    op = cond["op"]
    if isinstance(op, dict):
        mask = op["masked_eq"]
        return number & mask == arg
    return {
        "eq": number == arg,
        "ne": number != arg,
        "ge": number >= arg,
        "gt": number > arg,
        "le": number <= arg,
        "lt": number < arg,
    }[op]


def main(argv):
    check = None
    if len(argv) > 2 and argv[1] == "--check":
        check = argv[2]
        argv = argv[:1] + argv[3:]
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    total = defaultdict(lambda: defaultdict(lambda: [0, set()]))
    for path in argv[1:]:
        merge(total, classify(path))

    for kind in sorted(total):
        calls = total[kind]
        print(f"== {kind}: {len(calls)} system calls")
        for name in sorted(calls):
            count, values = calls[name]
            shown = ""
            if values:
                shown = "  " + ", ".join(
                    f"{v[0]:#x} {v[1]}".strip() if isinstance(v, tuple) else v
                    for v in sorted(values, key=str)
                )
            print(f"  {name:24} {count:6}{shown}")

    if check is None:
        return 0
    with open(check, encoding="utf-8") as spec:
        filters = json.load(spec)
    status = 0
    for kind, spec in sorted(filters.items()):
        rules = defaultdict(list)
        for rule in spec["filter"]:
            rules[rule["syscall"]].append(rule.get("args", []))
        traced = total.get(kind, {})
        for name, (_count, values) in sorted(traced.items()):
            refused = allowed(rules, name, values)
            if refused is None:
                print(f"MISSING {kind}: {name}")
                status = 1
            elif refused:
                print(f"REFUSED {kind}: {name} with {sorted(refused, key=str)}")
                status = 1
        headroom = sorted(set(rules) - set(traced))
        print(f"{kind}: {len(rules)} allowed, {len(traced)} traced; "
              f"not traced (headroom): {', '.join(headroom) or '-'}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
