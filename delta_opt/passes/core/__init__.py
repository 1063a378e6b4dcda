"""The matching and rewriting machinery the passes share.

- :mod:`.ops` — the ATen vocabulary (softmax, products, casts, layout ops, SDPA forms) as tables;
- :mod:`.graph` — fixed values vs data, concrete sizes, evaluation of data-independent sub-graphs;
- :mod:`.operands` — q/k/v behind views, head repeats and constant scalings (checked by replay);
- :mod:`.masks` — mask terms and the causal proof;
- :mod:`.site` — a found site and the rules that keep one dense;
- :mod:`.rewrite` — inserting the op; :mod:`.convert` — the loop every pass runs.
"""
