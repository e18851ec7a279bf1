"""Stage names from step ids. Every stage is a bytewax `@operator`, so its steps nest under it
(`judgeflow.cost_window.windows`) and the dataflow graph shows the architecture; dead letters and metric
labels name the stage a step belongs to, as the flow wires it (`cost_window`, `judge_window`)."""


def stage_of(step_id: str) -> str:
    """The top-level stage of a fully qualified step id: its part after the flow's name."""
    parts = step_id.split(".")
    return parts[1] if len(parts) > 1 else step_id
