# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # What if? Passages, batch, K, key/value heads, decoder size and chip
#
# A guided sweep with `fidoperf.sweep`: fidoperf's model over a grid of FiD/FiDO configurations,
# evaluated with numpy broadcasting (thousands of rows in well under a second). The base is FiD-Base
# on TPU v4 in the paper's setting (40 passages x 256 tokens, 32 target tokens, batch 24, bf16); each
# knob below replaces one field. Combinations that cannot exist (kv heads that do not divide the
# query heads) stay in the table with the reason, and rows whose batch does not fit in HBM are
# marked. All times are predictions with the default settings, the **derated** model (each chip's
# per-kernel efficiencies from published measurements, fixed costs per kernel and launch, the
# profile's default implementation: XLA on TPU, tuned kernels on GPU; see the README), not
# measurements; `settings=fp.Settings(efficiency="roofline")` gives the datasheet lower bound.
# Sections 6 and 7 simulate serving under load (queueing, batching, several chips).
# Units: ms, GB (1e9 B), queries/s. Regenerate with `python notebooks/run_notebooks.py 02`.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["png"]
# %config InlineBackend.print_figure_kwargs = {"bbox_inches": "tight", "dpi": 80}

import json
import time

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

import fidoperf as fp
from fidoperf.present import plots, serving_plots
from fidoperf.present.fmt import text_table
from fidoperf.present.plan_report import best_table, summary_line
from fidoperf.sweep import best, parse_vary, sweep
from fidoperf.whatif import simulate
from fidoperf.whatif.plan import ServingPlan, assumptions, plan

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 30)

# %% [markdown]
# ## 1. The grid
#
# The values are written as the CLI's `--vary` options (`fidoperf sweep --vary passages=10,20,...`);
# `parse_vary` reads them. K is the cross-attention period (K = 1: every decoder layer, FiD), kv heads
# G the key/value heads of the decoder's attention (1 = MQA, 12 = MHA for the Base decoder; for
# larger decoders the full count is 16 or 32, so 12 does not divide and those rows are errors).

# %%
vary = parse_vary([
    "passages=10,20,40,70,100",
    "batch=1,4,8,16,24,32,64,128",
    "cross_attn_every=1,2,3,6,12",
    "kv_heads=1,2,4,12",
    "decoder_size=base,large,xl",
    "hardware=tpu-v4,a100-80gb,h100-sxm",
])
base_model, base_hw, base_wl = fp.load_model("fid-base"), fp.load_hardware("tpu-v4"), fp.Workload()
t0 = time.perf_counter()
grid = sweep(base_model, base_hw, base_wl, vary)
elapsed = time.perf_counter() - t0
ok = grid["error"].isna()
print(f"{len(grid):,} configurations in {elapsed:.2f} s: {(~ok).sum():,} impossible, "
      f"{(ok & ~grid['fits']).sum():,} do not fit in HBM, {(ok & grid['fits']).sum():,} feasible")
print(grid.loc[~ok, "error"].value_counts().to_string())


# %%
# The columns people read, in ms and GB.
def view(df):
    return pd.DataFrame({
        "decoder": df["decoder_size"], "chip": df["hardware"], "passages": df["passages"],
        "batch": df["batch"], "K": df["cross_attn_every"], "kv heads": df["kv_heads"],
        "encoder+K/V (ms)": 1e3 * (df["encoder_time_s"] + df["cross_kv_time_s"]),
        "decoder (ms)": 1e3 * df["decoder_time_s"],
        "per sample (ms)": 1e3 * df["time_per_sample_s"],
        "batch latency (ms)": 1e3 * df["batch_time_s"],
        "samples/s": df["samples_per_s"],
        "memory (GB)": df["peak_memory_bytes"] / 1e9,
        "largest batch": df["max_batch"],
        "fits": df["fits"],
    }).round(2)


# The paper's FiDO-Base point, and the knobs one at a time around it.
fido = dict(passages=40, batch=24, cross_attn_every=6, kv_heads=1, decoder_size="base",
            hardware="tpu-v4")


def around(field):
    sel = ok.copy()
    for k, v in fido.items():
        if k != field:
            sel &= grid[k] == v
    order = {v: i for i, v in enumerate(vary[field])}
    return grid[sel].sort_values(field, key=lambda s: s.map(order))


view(around("cross_attn_every"))

# %% [markdown]
# ## 2. One knob at a time around FiDO-Base
#
# Each panel moves one field from the FiDO-Base point (40 passages, batch 24, K = 6, 1 kv head, Base
# decoder, TPU v4) and shows time per sample split into prefill (encoder and K/V projection) and
# decoder. Solid: FiDO-Base's configuration; dashed, for K and kv heads: the same with FiD's other
# setting (MHA, resp. K = 1), to show how the two changes interact.

# %%
fig, axes = plt.subplots(2, 3, figsize=(12, 6.4), constrained_layout=True)
labels = {"passages": "passages", "batch": "batch size",
          "cross_attn_every": "K (cross-attention period)", "kv_heads": "kv heads G",
          "decoder_size": "decoder size", "hardware": "chip"}
for ax, field in zip(axes.flat, labels):
    d = around(field)
    x = range(len(d)) if field in ("decoder_size", "hardware") else d[field]
    pre = 1e3 * (d["encoder_time_s"] + d["cross_kv_time_s"])
    ax.plot(x, pre, "o-", color="#4c72b0", label="prefill (encoder + K/V proj.)")
    ax.plot(x, 1e3 * d["decoder_time_s"], "^-", color="#c44e52", label="decoder, 32 steps")
    ax.plot(x, 1e3 * d["time_per_sample_s"], "s-", color="0.2", label="total")
    other = {"cross_attn_every": ("kv_heads", 12, "total with MHA (G = 12)"),
             "kv_heads": ("cross_attn_every", 1, "total with K = 1")}.get(field)
    if other:
        key, value, text = other
        sel = ok & (grid[key] == value)
        for k, v in fido.items():
            if k not in (field, key):
                sel &= grid[k] == v
        alt = grid[sel].sort_values(field)
        ax.plot(alt[field], 1e3 * alt["time_per_sample_s"], "s--", color="0.5", label=text)
        ax.legend(fontsize=7, loc="upper right" if field == "cross_attn_every" else "center right",
                  handles=ax.get_lines()[-1:])
    if field in ("decoder_size", "hardware"):
        ax.set_xticks(list(x), d[field])
    if field in ("batch", "passages", "cross_attn_every", "kv_heads"):
        ax.set_xscale("log")
        ticks = [v for v in vary[field] if v != 24]  # 24 would overlap 32 on a log axis
        ax.set_xticks(ticks, [str(v) for v in ticks])
        ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel(labels[field])
    ax.set_ylabel("time per sample (ms)")
    ax.grid(True, color="0.9", lw=0.6)
axes.flat[0].legend(fontsize=7, loc="upper left")
fig.suptitle("FiDO-Base on TPU v4, one field changed at a time (derated model)", fontsize=10)
plt.show()

# %%
p40, p100 = around("passages").set_index("passages").loc[[40, 100]].itertuples()
b1, b128 = around("batch").set_index("batch").loc[[1, 128]].itertuples()
k = around("cross_attn_every").set_index("cross_attn_every")["time_per_sample_s"]
hw = around("hardware").set_index("hardware")["time_per_sample_s"]
display(Markdown(
    "From 40 to 100 passages FiDO-Base's time per sample grows "
    f"{p100.time_per_sample_s / p40.time_per_sample_s:.1f}x "
    "(the encoder is linear in passages; with MQA and K = 6 the decoder barely notices them). "
    "Batch 1 -> 128 cuts the decoder's time per sample "
    f"{b1.decoder_time_s / b128.decoder_time_s:.0f}x (weights "
    "are read once per step for the whole batch) but leaves prefill unchanged. K = 1 -> 12 gains "
    f"{k.loc[1] / k.loc[12]:.2f}x with MQA: once the cross-attention bytes are gone, the encoder "
    "sets the pace. "
    f"H100 is {hw.loc['tpu-v4'] / hw.loc['h100-sxm']:.1f}x faster than TPU v4 here and A100 "
    f"{hw.loc['tpu-v4'] / hw.loc['a100-80gb']:.1f}x."))

# %% [markdown]
# ## 3. K against kv heads
#
# Time per sample (ms) for the Base decoder in the paper's setting (40 passages, batch 24, TPU v4):
# rows K, columns kv heads G. FiD is the bottom-right corner (K = 1, G = 12), FiDO-Base K = 6, G = 1.

# %%
sel = ok & (grid["passages"] == 40) & (grid["batch"] == 24) & (grid["decoder_size"] == "base") \
    & (grid["hardware"] == "tpu-v4")
kg = grid[sel]
total = kg.pivot(index="cross_attn_every", columns="kv_heads", values="time_per_sample_s") * 1e3
decoder = kg.pivot(index="cross_attn_every", columns="kv_heads", values="decoder_time_s") * 1e3
display(Markdown("**Time per sample (ms)**"))
display(total.rename_axis(index="K", columns="kv heads G").round(2))
display(Markdown("**Decoder time per sample, 32 steps (ms)**"))
display(decoder.rename_axis(index="K", columns="kv heads G").round(3))
fid_d = decoder.loc[1, 12]
print(f"decoder: FiD (K=1, G=12) / FiDO (K=6, G=1) = {fid_d / decoder.loc[6, 1]:.1f}x; "
      f"LSA alone {fid_d / decoder.loc[6, 12]:.1f}x, MQA alone {fid_d / decoder.loc[1, 1]:.1f}x")

# %% [markdown]
# ## 4. The best configurations
#
# `best` keeps the rows that fit in HBM and meet a batch latency limit (here 1 s for the whole batch,
# prefill and all 32 steps) and returns the fastest per sample. The number of passages is a
# requirement of the application rather than a knob, so it is fixed at 40. The model knows speed,
# not answer quality: it always prefers the fewest cross-attention layers (largest K) and one
# key/value head, whereas the paper chose K = 6 and larger decoders for accuracy. Read these as the
# cost of each choice, not as recommendations.

# %%
at40 = grid[grid["passages"] == 40]
top, qualifies = best(at40, top=5, time_limit_s=1.0)
print(f"{qualifies.sum():,} of {len(at40):,} configurations at 40 passages fit and meet 1 s; "
      "the 5 fastest:")
view(top)

# %%
# The fastest configuration of every (decoder size, chip) pair.
winners = pd.concat([best(at40[(at40["decoder_size"] == size) & (at40["hardware"] == chip)],
                          top=1, time_limit_s=1.0)[0]
                     for size in vary["decoder_size"] for chip in vary["hardware"]])
view(winners)

# %%
w = winners.set_index(["decoder_size", "hardware"])["time_per_sample_s"]
display(Markdown(
    "With LSA and MQA pushed to their limit, the decoder is cheap: an XL decoder costs "
    + ", ".join(f"{w.loc[('xl', chip)] / w.loc[('base', chip)] - 1:.0%} more on {chip}"
                for chip in vary["hardware"])
    + " per sample than a Base decoder, because the Base encoder sets the cost. This is FiDO's "
    "argument "
    "for spending the decoder's saving on a larger decoder."))

# %% [markdown]
# The roofline and the time breakdown of the winners on TPU v4, one per decoder size, each predicted
# again with `predict` (the sweep promises the same numbers as `predict`; the printed difference
# checks it).

# %%
chosen = []
for r in winners[winners["hardware"] == "tpu-v4"].itertuples():
    m = fp.override_model(base_model, decoder_size=r.decoder_size, kv_heads=int(r.kv_heads),
                          cross_attn_every=int(r.cross_attn_every))
    m = m.replace(name=f"{r.decoder_size} decoder, K={r.cross_attn_every}, G={r.kv_heads}, "
                       f"batch {r.batch}")
    p = fp.predict(m, fp.load_hardware(r.hardware), base_wl.replace(batch=int(r.batch)))
    rel = abs(p.totals["time_per_sample_s"] / r.time_per_sample_s - 1)
    print(f"{m.name} on {r.hardware}: {1e3 * p.totals['time_per_sample_s']:.3f} ms per sample "
          f"(sweep vs predict: {rel:.1e} relative)")
    chosen.append(p)

# %%
fig, ax = plt.subplots(figsize=(8.5, 5.8))
hws = [fp.load_hardware(h) for h in dict.fromkeys(p.hardware.name for p in chosen)]
plots.roofline(ax, hws, chosen, arrows=False,
               title="Fastest configuration per decoder size on TPU v4 "
                     "(40 passages, <= 1 s per batch)")
plt.show()

# %%
fig, ax = plt.subplots(figsize=(8, 4.6))
labels = [p.model.name.replace(", batch", "\nbatch").replace("decoder, ", "decoder\n")
          + f"\n{p.hardware.name}" for p in chosen]
plots.breakdown(ax, plots.breakdown_table(chosen, labels),
                title="Time per sample of the fastest configuration per decoder size on TPU v4")
plt.show()

# %% [markdown]
# ## 5. Decoder time per step against batch
#
# One decoding step of the whole batch (ms), averaged over the 32 steps, for FiD-Base, FiDO-Base and
# FiDO-Base-XL on TPU v4 with 10, 40 and 100 passages. Weights are read once per step whatever the
# batch; each sample adds its own cross-attention keys and values. Hollow markers: the batch does not
# fit in 32 GiB.

# %%
step_models = [fp.load_model(m) for m in ("fid-base", "fido-base", "fido-base-xl")]
steps = plots.decoder_step_table(step_models, base_hw)
fig, ax = plt.subplots(figsize=(8.5, 5.2))
plots.decoder_step_vs(ax, steps, title=f"Decoder time per step on {base_hw.name} (derated model)")
plt.show()

# %%
ms = 1e3 * steps[steps["passages"] == 40].set_index(["model", "batch"])["time_per_step_s"]
per_sample = {m: ms.loc[(m, 64)] / 64 for m in ("fid-base", "fido-base", "fido-base-xl")}
display(Markdown(
    f"At 40 passages a FiD-Base step takes {ms.loc[('fid-base', 1)]:.2f} ms at batch 1 and "
    f"{ms.loc[('fid-base', 64)]:.1f} ms at batch 64 "
    f"({ms.loc[('fid-base', 64)] / ms.loc[('fid-base', 1)]:.0f}x): almost linear in the batch, "
    "because each sample brings its own cross-attention cache. FiDO-Base's "
    f"step grows from {ms.loc[('fido-base', 1)]:.2f} to {ms.loc[('fido-base', 64)]:.2f} ms "
    f"({ms.loc[('fido-base', 64)] / ms.loc[('fido-base', 1)]:.1f}x): it is mostly the weight "
    "read, shared by the batch. Per sample at batch 64: "
    + ", ".join(f"{m} {v:.3f} ms" for m, v in per_sample.items())
    + " per step: FiDO-Base-XL's much larger decoder still costs less per step than FiD-Base's."))

# %% [markdown]
# ## 6. A capacity plan
#
# `fidoperf.plan` answers: how many chips, spread how, serve **200 queries/s with a p99 latency of at
# most 1 s**, for each model and chip? It *simulates* the serving (continuous batching, Poisson
# arrivals, queueing included) rather than dividing throughput by a batch time: for every (model,
# chip) pair it prunes the parallel layouts (one chip; replicas of T chips under tensor parallelism;
# separate encoder and decoder pools in several ratios) that cannot fit or cannot meet the target even
# alone, searches the highest rate per unit of the others by simulation, and keeps the layout needing
# the fewest chips. The time budget is large here so that every layout is evaluated and the plan does
# not depend on the speed of the machine; the assumptions are printed below the table. Only TPU v4 has
# a list price in its profile: the GPUs have no cost and rank by chips after it.

# %%
plan_models = [fp.load_model(m) for m in ("fid-base", "fido-base", "fido-base-xl", "fido-large-xxl")]
plan_hw = [fp.load_hardware(h) for h in ("tpu-v4", "a100-80gb", "h100-sxm")]
t0 = time.perf_counter()
capacity = plan(plan_models, plan_hw, base_wl, qps=200, latency_ms=1000, serving=ServingPlan(time_budget_s=900))
print(f"planned in {time.perf_counter() - t0:.0f} s")
print(summary_line(capacity))
display(Markdown(text_table(best_table(capacity), markdown=True)))
for note in capacity.notes:
    print("note:", note)

# %%
display(Markdown("**Assumptions**\n\n" + "\n".join(f"- {a}" for a in assumptions(capacity.serving))))

# %%
for title, caption, ax in plots.plan_figures(capacity):
    display(Markdown(f"**{title}.** {caption}"))
    display(ax.figure)

# %%
b = capacity.best[capacity.best["feasible"]]
chips_by = b.pivot(index="model", columns="hardware", values="chips")
layout_by = b.pivot(index="model", columns="hardware", values="layout")
display(Markdown("**Chips needed for 200 queries/s at p99 <= 1 s (layout chosen)**"))
display(chips_by.astype(int).astype(str).add(" (").add(layout_by).add(")")
        .loc[[m.name for m in plan_models], [h.name for h in plan_hw]])
fewest = b.sort_values(["chips", "latency_s"]).iloc[0]
pooled = b[b["layout"].str.startswith("enc")]


def chips_of(model):
    return ", ".join(f"{int(chips_by.loc[model, h.name])} {h.name}" for h in plan_hw)


display(Markdown(
    f"Fewest chips: {int(fewest['chips'])} x {fewest['hardware']} running {fewest['model']} "
    f"({fewest['layout']}, p99 {1e3 * fewest['latency_s']:.0f} ms). FiD-Base needs "
    f"{chips_of('fid-base')}; FiDO-Base {chips_of('fido-base')}; FiDO-Base-XL, with its XL decoder, "
    f"{chips_of('fido-base-xl')}; FiDO-Large-XXL {chips_of('fido-large-xxl')}. "
    f"{len(pooled)} of the {len(b)} plans serve from separate encoder and decoder pools: "
    "the decoding batch then never waits for a newcomer's encode."))

# %% [markdown]
# ## 7. Latency under load
#
# What the plan searches, drawn: `fidoperf.whatif.simulate` runs a discrete-event simulation of one
# chip serving Poisson arrivals (4,000 requests per rate, the first 10% left out) in the paper's
# setting, with **static** batching (a batch is formed when the chip is free, waiting at most 10 ms to
# fill, and decoded to its longest output) or **continuous** batching (requests join the decoding
# batch at step boundaries; their encodes pause decoding). Every encode and decoding step takes the
# time `predict` gives for the batch as composed. The curves are p50 (dashed) and p99 (solid) latency
# against offered load up to 95% of the chip's capacity (dotted verticals: the rate served with the
# queue never empty).

# %%
sim_models = [fp.load_model(m) for m in ("fid-base", "fido-base")]
sim_hw = [fp.load_hardware(h) for h in ("tpu-v4", "h100-sxm")]
curves, capacities, rates = {}, {}, []
for h in sim_hw:
    for m in sim_models:
        for policy in ("static", "continuous"):
            prep = simulate.prepare(m, h, base_wl, requests=4000, serving=simulate.Serving(policy=policy))
            label = f"{m.name}, {policy}"
            curves[(h.name, label)] = simulate.load_curve(prep)
            capacities[(h.name, label)] = prep.capacity_qps
            for target_ms in (100, 1000):
                r = simulate.search_rate(prep, target_s=target_ms / 1e3)
                rates.append({"chip": h.name, "model": m.name, "policy": policy, "target p99 (ms)": target_ms,
                              "queries/s": round(r.rate_qps, 1), "at the cap": r.reason.startswith("the target holds"),
                              "p99 (ms)": round(1e3 * r.latency_s, 1),
                              "alone p99 (ms)": round(1e3 * r.floor_latency_s, 1),
                              "capacity (queries/s)": round(prep.capacity_qps, 1)})

fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
for ax, h in zip(axes, sim_hw):
    mine = {label: c for (chip, label), c in curves.items() if chip == h.name}
    caps = {label: c for (chip, label), c in capacities.items() if chip == h.name}
    serving_plots.latency_vs_load(ax, mine, capacity_qps=caps, log_x=True, target_s=0.1,
                                  title=f"One {h.name}: latency against offered load")
plt.show()

# %%
rate_table = pd.DataFrame(rates)
display(Markdown("**Highest rate per chip whose p99 latency meets the target** (0: not even a request "
                 "served alone meets it; *at the cap*: the target still holds at the highest load a run of 4,000 "
                 "requests speaks for, 95.3% of capacity, so the rate is a lower bound)"))
display(rate_table)
print("serving: " + json.dumps({"rows": rate_table.to_dict(orient="records")}))  # for machines
r = rate_table.set_index(["chip", "model", "policy", "target p99 (ms)"])
q, alone, cap = r["queries/s"], r["alone p99 (ms)"], r["capacity (queries/s)"]


def gain(chip, policy, target):
    return q.loc[(chip, "fido-base", policy, target)] / q.loc[(chip, "fid-base", policy, target)]


def better(chip, model, target):
    s, c = q.loc[(chip, model, "static", target)], q.loc[(chip, model, "continuous", target)]
    if s == c:
        return f"{model} on {chip} at {target} ms: a tie ({s:.1f})"
    winner = "static" if s > c else "continuous"
    return f"{model} on {chip} at {target} ms: {winner} ({max(s, c):.1f} vs {min(s, c):.1f})"


def capacity_gain(chip):
    return cap.loc[(chip, "fido-base", "continuous", 1000)] / cap.loc[(chip, "fid-base", "continuous", 1000)]


tpu, h100 = (h.name for h in sim_hw)
display(Markdown(
    "With continuous batching, FiDO-Base serves "
    + ", ".join(f"{gain(h.name, 'continuous', 1000):.1f}x the queries of FiD-Base on one {h.name}" for h in sim_hw)
    + " under a 1 s target, close to the ratio of their capacities ("
    + ", ".join(f"{capacity_gain(h.name):.1f}x" for h in sim_hw)
    + "); under 100 ms the gain is "
    + ", ".join(f"{gain(h.name, 'continuous', 100):.1f}x" for h in sim_hw)
    + f", because a FiD-Base request served alone already takes {alone.loc[(tpu, 'fid-base', 'continuous', 100)]:.0f} "
    f"ms of the 100 on {tpu} ({alone.loc[(h100, 'fid-base', 'continuous', 100)]:.0f} ms on {h100}), leaving "
    "little room to queue and batch. Neither batching policy wins everywhere: "
    + "; ".join(better(h.name, m.name, t) for h in sim_hw for m in sim_models for t in (100, 1000))
    + ". Continuous batching starts a newcomer at the next step, but on one chip every encode pauses the whole "
    "decoding batch; static batching encodes a whole batch at once and then decodes without interruption."))
