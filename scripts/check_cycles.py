#!/usr/bin/env python3
"""Reports include/call cycles among the files of src/proxy.

An edge A -> B means that A.c calls a function (or reads a variable) that B.c
defines (from the symbols of the static library, `nm`), or that A.c includes
B.h where B.c exists. Registrations through function pointers (the access
stage, metrics providers) are not edges: that is the point of them. Prints
every strongly connected component of more than one file and exits 1 when
there is one that is not listed with --allow (a comma-separated group)."""
import argparse
import os
import re
import subprocess
import sys


def symbols(lib):
    out = subprocess.run(["nm", "-A", lib], check=True, capture_output=True, text=True).stdout
    defs, uses = {}, {}
    for line in out.splitlines():
        m = re.match(r"^[^:]*:([^:]+)\.o:\s*(?:[0-9a-fA-F]+)?\s+([A-Za-z])\s+(\S+)$", line)
        if not m:
            continue
        obj, kind, sym = m.groups()
        name = os.path.basename(obj).split(".c")[0]
        if kind in "TDBRC":
            defs[sym] = name
        elif kind == "U":
            uses.setdefault(name, set()).add(sym)
    return defs, uses


def includes(src):
    edges = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".c"):
                continue
            a = f[:-2]
            text = open(os.path.join(root, f), encoding="utf-8").read()
            for inc in re.findall(r'#include "([^"]+)\.h"', text):
                b = os.path.basename(inc)
                for r2, _, fs in os.walk(src):
                    if b + ".c" in fs and b != a:
                        edges.setdefault(a, set()).add(b)
    return edges


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lib", help="the proxy static library (libgh_proxy.a)")
    ap.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "src", "proxy"))
    ap.add_argument("--allow", action="append", default=[])
    args = ap.parse_args()
    defs, uses = symbols(args.lib)
    graph = {}
    for a, syms in uses.items():
        for s in syms:
            b = defs.get(s)
            if b and b != a:
                graph.setdefault(a, set()).add(b)
    for a, bs in includes(args.src).items():
        graph.setdefault(a, set()).update(bs)
    allowed = [sorted(g.split(",")) for g in args.allow]
    bad = 0
    for comp in sccs(graph):
        if len(comp) > 1:
            known = comp in allowed
            print(("allowed " if known else "") + "cycle: " + " ".join(comp))
            bad += not known
    if not bad:
        print("no include/call cycle among src/proxy files")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
