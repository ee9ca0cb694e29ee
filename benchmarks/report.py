"""The suite's verdicts (the targets of issues 7 and 32, each with its measured value) and
markdown tables."""

from __future__ import annotations

# engine -> (its tokens/s over the dynamic engine's, whether its tokens equal the dynamic one's)
_ENGINE_RATIOS = (
    ("static", "vs_dynamic", "identical_dynamic"),
    ("compiled", "compiled_vs_dynamic", "identical_compiled"),
)
DATA_CONSUMER = {  # loader -> training case whose step consumes its batches
    "text windows": ("text tower LM", "lm"),
    "speech windows": ("speech tower LM", "lm"),
    "ASR pairs (zipper collate)": ("zipper ASR, unfrozen", "pairs"),
    "ASR pairs (single collate)": ("single decoder ASR", "pairs"),
}


def _row(rows: list[dict], case: str, size: str, compiled: bool = False) -> dict | None:
    return next(
        (
            r
            for r in rows
            if r["case"] == case and r["size"] == size and r.get("compiled", False) == compiled
        ),
        None,
    )


def data_ratios(res: dict) -> dict[str, float]:
    """Loader samples/s over the samples/s its training step consumes (same size)."""
    size, out = res["sizes"][0], {}
    for loader, (case, _) in DATA_CONSUMER.items():
        r, d = _row(res["train"], case, size), res["data"].get(loader)
        if r and d:
            per_step = int(r["batch"].split("x")[0].split()[0])  # "32x128" / "16 pairs (...)"
            out[loader] = d["samples_per_s"] / (per_step / r["step_s"])
    return out


def targets(res: dict) -> list[dict]:
    """[{target, value, goal, ok}] for every target this run can measure: issue 7's, tightened
    or added by issue 32 (Zipper <= 1.15x its towers, >= 45% utilisation on a GPU at ``s``, our
    tower >= 1.2x the speed of transformers' Llama, static engine >= 1.5x on a CPU)."""
    out = []

    def add(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        out.append({"target": name, "value": value, "goal": goal, "ok": ok})

    train, cpu = res["train"], res["device"] == "cpu"
    size = "demo" if "demo" in res["sizes"] else res["sizes"][0]
    variants = sorted({r.get("compiled", False) for r in train})  # eager, then compiled if run
    for compiled in variants:
        how = ", torch.compile" if compiled else ""
        if cpu and (r := _row(train, "text tower LM", size, compiled)):
            add(
                f"text tower utilisation ({size}, CPU{how})",
                r["utilisation"],
                ">= 0.50",
                r["utilisation"] >= 0.5,
            )
        for case in ("zipper ASR, text frozen", "zipper ASR, unfrozen"):
            if r := _row(train, case, size, compiled):
                add(
                    f"{case}: step / (text + speech steps) ({size}{how}; FLOP ratio "
                    f"{r['flops_vs_towers']:.2f})",
                    r["vs_towers"],
                    "<= 1.15",
                    r["vs_towers"] <= 1.15,
                )
    gen = [g for g in res["generate"] if g["batch"] == 1 and "speedup" in g]
    if gen:
        n = max(g["new_tokens"] for g in gen)
        for g in (g for g in gen if g["new_tokens"] == n):
            add(
                f"{g['task']} cached / uncached speed, {n} new tokens, batch 1",
                g["speedup"],
                ">= 5, identical tokens",
                g["speedup"] >= 5 and g["identical"],
            )
    goal_b16, goal_b1 = (1.5, None) if cpu else (10.0, 5.0)
    longest = max((g["new_tokens"] for g in res["generate"]), default=0)
    for g in (g for g in res["generate"] if g["new_tokens"] == longest):
        goal = {16: goal_b16, 1: goal_b1}.get(g["batch"])
        for engine, ratio, same in _ENGINE_RATIOS:
            if goal is not None and ratio in g:
                add(
                    f"{g['task']} {engine} / dynamic engine tokens/s, batch {g['batch']}, "
                    f"{longest} new",
                    g[ratio],
                    f">= {goal:g}, identical tokens",
                    g[ratio] >= goal and g[same],
                )
    if "units" in res["tokenize"]:
        x = res["tokenize"]["units"]["x_realtime"]
        add("units tokenization, x real time", x, ">= 100", x >= 100)
    ratios = data_ratios(res)
    if ratios:
        worst = min(ratios, key=ratios.get)
        add(
            f"data loading / training consumption (worst: {worst})",
            ratios[worst],
            ">= 20",
            ratios[worst] >= 20,
        )
    demo = [r["peak_mb"] for r in train if r["size"] == "demo"]
    if demo:
        add(
            "peak memory of demo training steps, MB (proxy for make demo)",
            max(demo),
            "<= 4096",
            max(demo) <= 4096,
        )
    gpu_cases = ("text tower LM", "speech tower LM", "zipper ASR, text frozen")
    for compiled, case in ((c, k) for c in variants for k in gpu_cases if not cpu):
        if r := _row(train, case, "s", compiled):
            how = ", torch.compile" if compiled else ""
            u = r["utilisation"]
            add(f"{case}: s bf16 utilisation (GPU{how})", u, ">= 0.45", u >= 0.45)
    for r in res.get("hf_peer", []):
        how = "compiled per block" if r["compiled"] else "eager"
        add(
            f"transformers LlamaForCausalLM step / our tower's, same dims and weights "
            f"({r['size']}, {how})",
            r["peer_over_ours"],
            ">= 1.2",
            r["peer_over_ours"] >= 1.2,
        )
    return out


def _f(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}" if abs(x) < 1e4 else f"{x:,.0f}"


def markdown(res: dict) -> str:
    mm = res["matmul"]
    lines = [
        f"## Benchmarks: {res['machine']}",
        "",
        f"torch {res['torch']}, python {res['python']}; wall time {res.get('wall_s', 0):.0f} s. "
        f"Matmul reference ({mm['dtype']}, {mm['n']}^3): "
        f"**{mm['flops_per_s'] / 1e9:,.1f} GFLOP/s** (the utilisation denominator).",
        *[f"- note: {n}" for n in res["notes"]],
        "- phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.get("phase_s", {}).items()),
        "",
        "### Targets",
        "",
        "| target | measured | goal | met |",
        "|---|---:|---|:---:|",
    ]
    for t in res["targets"]:
        ok = "-" if t["ok"] is None else ("yes" if t["ok"] else "**no**")
        lines.append(f"| {t['target']} | {_f(t['value'])} | {t['goal']} | {ok} |")
    lines += [
        "",
        "### Training step (forward + backward + clip + AdamW)",
        "",
        "| size | case | batch | pad | step s | tokens/s | GFLOP/step | util | peak MB "
        "| time vs towers | FLOPs vs towers |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["train"]:
        case = r["case"]
        if r.get("compiled"):
            case += (
                f" **compiled** ({r['vs_eager']:.2f}x eager time; {r['compile_s']:.0f} s compile)"
            )
        lines.append(
            f"| {r['size']} | {case} | {r['batch']} | {r['padding']:.1%} | "
            f"{_f(r['step_s'], 3)} | {_f(r['tokens_per_s'], 0)} | {_f(r['model_flops'] / 1e9)} | "
            f"{r['utilisation']:.1%} | {_f(r['peak_mb'], 0)} | {_f(r.get('vs_towers'))} | "
            f"{_f(r.get('flops_vs_towers'))} |"
        )
    lines += [
        "",
        f"### Generation ({res['gen_size']} models, greedy, length forced)",
        "",
        "static: the default engine; compiled: its step through torch.compile (timed after "
        "its first call of that shape, which compiles, then generates: first call s); dynamic: "
        "the KV-cached engine it replaced; uncached: the whole prefix each step. Same: the same "
        "tokens as the dynamic engine (uncached: as the static one).",
        "",
        "| case | batch | new tokens | static tok/s | compiled tok/s | first call s "
        "| dynamic tok/s | static x dynamic | same | compiled x dynamic | same "
        "| uncached tok/s | x uncached | same |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|:---:|---:|---:|:---:|",
    ]
    for g in res["generate"]:
        same = {True: "yes", False: "**no**", None: "-"}
        lines.append(
            f"| {g['task']} ({g['out']} out) | {g['batch']} | {g['new_tokens']} | "
            f"{_f(g['cached_tok_s'], 1)} | {_f(g.get('compiled_tok_s'), 1)} | "
            f"{_f(g.get('first_call_s'), 0)} | {_f(g.get('dynamic_tok_s'), 1)} | "
            f"{_f(g.get('vs_dynamic'), 2)} | {same[g.get('identical_dynamic')]} | "
            f"{_f(g.get('compiled_vs_dynamic'), 2)} | {same[g.get('identical_compiled')]} | "
            f"{_f(g.get('uncached_tok_s'), 1)} | {_f(g.get('speedup'), 1)} | "
            f"{same[g.get('identical')]} |"
        )
    lines += _peer_lines(res.get("hf_peer", []))
    lines += ["", "### Tokenization and data loading", "", "| what | figure |", "|---|---:|"]
    for codec, r in res["tokenize"].items():
        lines.append(f"| {codec} tokenization | {r['x_realtime']:.1f}x real time |")
    ratios = data_ratios(res)
    for name, d in res["data"].items():
        ratio = f" ({ratios[name]:.0f}x training)" if name in ratios else ""
        lines.append(f"| {name}, {d['batch']} | {d['samples_per_s']:,.0f} samples/s{ratio} |")
    for name, v in res.get("vocoding", {}).get("cases", {}).items():
        lines.append(
            f"| vocoding, {name} ({v['params'] / 1e6:.2f}M) | {v['x_realtime']:.1f}x real time |"
        )
    return "\n".join(lines) + "\n"


def _peer_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "### Our tower against transformers' LlamaForCausalLM (same dims, weights and batch)",
        "",
        "| size | batch | ours s/step | peer s/step | peer / ours (rounds: min-max) "
        "| max logit diff |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        how = ", compiled" if r["compiled"] else ""
        lines.append(
            f"| {r['size']}{how} | {r['batch']} | {_f(r['ours_step_s'], 4)} | "
            f"{_f(r['peer_step_s'], 4)} | {r['peer_over_ours']:.2f} ({r['ratio_min']:.2f}-"
            f"{r['ratio_max']:.2f}) | {r['max_logit_diff']:.1e} |"
        )
    return lines
