"""Which aspects an evaluation may judge: the data's, no more and no fewer.

A policy trained on one data set's aspects and judged by scorers of other aspects gets a
meaningless verdict (the toy world's exact scorers on HelpSteer answers score politeness 0.000),
and the promotion gate would act on it. ``judged_models`` checks the evaluation's scorers against
the aspects the validated data has, before anything is generated.
"""

from __future__ import annotations

from fgpo_tasks.errors import ConfigError


def judged_models(eval_models: dict[str, list[str]] | None, data_aspects: list[str], *,
                  where: str) -> dict[str, list[str]]:
    """The ``eval_models`` to evaluate with, given the data's aspects.

    ``eval_models`` None: the evaluation's default, the toy world's exact scorers
    (``rule:<aspect>``), narrowed to the data's aspects; allowed only when every data aspect is a
    toy-world aspect. Given: its aspects must be exactly the data's. Anything else is a
    ConfigError naming both lists and ``where`` the scorers were configured.
    """
    from fgpo_tasks.synthetic import ASPECTS as TOY_ASPECTS

    data = sorted(set(data_aspects))
    if eval_models is None:
        foreign = [a for a in data if a not in TOY_ASPECTS]
        if foreign:
            raise ConfigError(
                f"{where}: the evaluation's default scorers are the toy world's rule scorers "
                f"{list(TOY_ASPECTS)}, but the data's aspects are {data} ({foreign} have no rule "
                "scorer): use a profile that judges this data (e.g. one with a holdout split, "
                "such as helpsteer2) or set evaluate.eval_models for these aspects")
        return {a: [f"rule:{a}"] for a in data}
    judged = sorted(eval_models)
    extra = [a for a in judged if a not in data]
    missing = [a for a in data if a not in judged]
    if extra or missing:
        parts = ([f"scorers for aspects the data does not have: {extra}"] if extra else []) + \
                ([f"no scorer for the data's aspects {missing}"] if missing else [])
        raise ConfigError(f"{where}: evaluation scorers do not match the data's aspects {data}: "
                          + "; ".join(parts) + " (set evaluate.eval_models to one entry per data aspect)")
    return {a: [m] if isinstance(m, str) else list(m) for a, m in sorted(eval_models.items())}


def check_judges(cfg, data_aspects: list[str]) -> None:
    """Fail early (right after validation, before any training) when the profile's evaluation
    would judge other aspects than the data's. ``cfg``: a PipelineConfig. With a holdout split,
    the evaluation reward models are trained on the data's own aspects: nothing to check."""
    if cfg.holdout is not None:
        return
    judged_models(cfg.stages.get("evaluate", {}).get("eval_models"), data_aspects,
                  where=f"profile {cfg.profile!r} [evaluate]")
