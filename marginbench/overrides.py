"""From command-line overrides to a validated config, before Hydra starts any job.

``model=XU80`` is shorthand for ``model=zoo model.name=XU80``; every value of every sweep is
composed and checked (:func:`validate_overrides`), so a typo in the fifth value of a sweep
fails in one line before the first job runs; Hydra's multi-line composition errors become
one actionable line (:func:`explain_compose_error`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from marginbench.config import CONFIG_DIR
from marginbench.errors import MarginbenchError


def model_group_options() -> set[str]:
    return {p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")}


def expand_model_shorthand(overrides: Sequence[str]) -> list[str]:
    """``model=XU80`` (or a RobustBench id, or a sweep of them) -> ``model=zoo model.name=XU80``.

    The model config group has two options (zoo, custom); any other value is a model name.
    """
    result: list[str] = []
    options = model_group_options()
    for override in overrides:
        match = re.fullmatch(r"model=(.+)", override)
        if match and match.group(1) not in options:
            result += ["model=zoo", f"model.name={match.group(1)}"]
        else:
            result.append(override)
    return result


def sweep_variants(overrides: Sequence[str]) -> list[list[str]]:
    """Single-run override lists covering every value of every sweep (for validation)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    base: list[str] = []
    sweeps: list[tuple[int, list[str]]] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            sweeps.append((len(base), [f"{key}={value}" for value in values]))
            base.append(sweeps[-1][1][0])
        else:
            base.append(override.input_line or f"{key}={override.get_value_element_as_str()}")
    variants = [list(base)]
    for position, values in sweeps:
        for value in values[1:]:
            variant = list(base)
            variant[position] = value
            variants.append(variant)
    return variants


def compose(overrides: Sequence[str], return_hydra_config: bool = False) -> Any:
    """The run config for these overrides (no validation beyond the schema's types)."""
    from marginbench.config import hydra_compose

    return hydra_compose("config", overrides, return_hydra_config)


def explain_compose_error(error: BaseException) -> str:
    """Hydra/OmegaConf's multi-line composition errors, as one actionable line."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 6:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in chain)
    unknown = re.search(r"Key '([^']+)' (?:is not in struct|not in)", text) and re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        from omegaconf import OmegaConf

        from marginbench.config import MarginbenchConfig

        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.structured(MarginbenchConfig)
        known = list(OmegaConf.select(node, parent).keys()) if parent and OmegaConf.select(node, parent) is not None else list(node.keys())
        guess = difflib.get_close_matches(leaf, known, n=1)
        hint = f" (did you mean '{f'{parent}.' if parent else ''}{guess[0]}'?)" if guess else ""
        if parent == "attack.options":  # free-form: a preset's yaml lists only the options it sets
            return (f"attack option '{leaf}' is not set by this attack preset; add it with a leading ++ "
                    f"(++{key}=VALUE), see README \"Margin estimators\" for the options")
        return f"unknown config key '{key}'{hint}; run `marginbench run --help` for the keys"
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        available = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")) if (CONFIG_DIR / group).is_dir() else []
        return f"{group}={option} is not an option; choose one of: {', '.join(available) or '(none)'}"
    converted = re.search(r"Value '([^']*)' of type '(\w+)' could not be converted to (\w+).*?full_key: (\S+)", text, re.S)
    if converted:
        value, _, target, key = converted.groups()
        return f"{key}={value} is not a valid {target.lower()}; fix the value of {key}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"invalid configuration: {first}"


def validate_overrides(overrides: Sequence[str]) -> None:
    """Compose every sweep variant and run the cheap checks; raise MarginbenchError."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from marginbench.settings import validate

    try:
        variants = sweep_variants(overrides)
    except HydraException as error:
        raise MarginbenchError(f"cannot parse the overrides: {str(error).splitlines()[0]}") from None
    for variant in variants:
        config_overrides = [o for o in variant if not o.lstrip("+~").startswith("hydra")]
        try:
            cfg = compose(config_overrides)
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            raise MarginbenchError(explain_compose_error(error)) from None
        validate(cfg)


