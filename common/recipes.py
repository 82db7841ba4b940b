"""The continual recipe names, importable without torch (settings and enqueue-time checks read them).

`workers.learning.continual.RECIPES` holds what each one does; a unit test keeps the two in step.
"""

RECIPE_NAMES: tuple[str, ...] = (
    "naive", "replay", "ewc_lora", "ewc_delta_w", "l2_delta_w", "kl", "self_replay", "nested", "nested_surprise",
    "default",
)


def recipe_problem(name: str) -> str | None:
    """None for a known recipe, else the one-line reason naming the choices."""
    if name in RECIPE_NAMES:
        return None
    return f"unknown recipe {name!r}; choose one of {', '.join(RECIPE_NAMES)}"
