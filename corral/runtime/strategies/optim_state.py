"""Optimizer state keyed by parameter name, so a checkpoint moves between strategies and stage counts.

torch's `optimizer.state_dict()` numbers parameters by their position in the
optimizer, which differs between a whole model (ddp) and one pipeline stage.
Keyed by the parameter's name in the user's model instead, the state of every
stage merges into one, and any split (or the whole model) takes its share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

FORMAT = "by-name"


def named_state(
    optimizer: torch.optim.Optimizer, names: Mapping[int, str], sd: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The optimizer's state and param groups with parameters named (`names`: id(param) -> name).

    `sd` is the optimizer's state_dict() when the state is held elsewhere (the parameter servers).
    """
    sd = optimizer.state_dict() if sd is None else sd
    index_to_name: dict[int, str] = {}
    for group, saved in zip(optimizer.param_groups, sd["param_groups"]):
        for p, i in zip(group["params"], saved["params"]):
            index_to_name[i] = names[id(p)]
    return {
        "format": FORMAT,
        "state": {index_to_name[i]: s for i, s in sd["state"].items()},
        "param_groups": [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [index_to_name[i] for i in g["params"]]}
            for g in sd["param_groups"]
        ],
    }


def merge(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One named state out of the named states of disjoint parameter sets (the stages of one model)."""
    merged: dict[str, Any] = {"format": FORMAT, "state": {}, "param_groups": []}
    for part in parts:
        merged["state"].update(part["state"])
        for k, group in enumerate(part["param_groups"]):
            if k == len(merged["param_groups"]):
                merged["param_groups"].append({**group, "params": []})
            merged["param_groups"][k]["params"].extend(group["params"])
    return merged


def load_named_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any], names: Mapping[int, str]) -> None:
    """Restore this optimizer's share of a named state (torch's own index format is loaded as it is)."""
    if saved.get("format") != FORMAT:
        optimizer.load_state_dict(saved)
        return
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(
            f"the checkpoint's optimizer has {len(saved['param_groups'])} param groups, "
            f"this one {len(optimizer.param_groups)}"
        )
    state: dict[int, Any] = {}
    groups = []
    index = 0
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        ids = []
        for p in group["params"]:
            name = names[id(p)]
            if name in saved["state"]:
                state[index] = saved["state"][name]
            ids.append(index)
            index += 1
        groups.append({**{k: v for k, v in saved_group.items() if k != "params"}, "params": ids})
    optimizer.load_state_dict({"state": state, "param_groups": groups})
