"""step: STeP, self-reflected trajectories with partial masking (docs/methods/step.md). The agent acts in an env
in ReAct turns; after each step the teacher judges it (ok / error + reason); an erroneous step is kept without loss,
followed by the teacher's reflection and corrected step, which the env executes. Successful trajectories are kept,
golden ones mixed in at a ratio. Stages: `synthesize` (synth_stages.py with episode.py and teacher.py), `select`."""
from pathlib import Path
from typing import Any

from pipelines.methods.step import exports  # noqa: F401  (registers the STeP exports)
from pipelines.methods.step.synth_stages import SelectStage, SynthesizeStage
from schemas.registry import Method, StageSpec, register_method


def step_summary(stages: dict[str, dict]) -> dict[str, Any]:
    """What `errata build` prints after a STeP build: the yield per stage, the verdicts, how the interventions
    fared in the env, the masked fraction of the kept rows."""
    syn, sel = stages.get("synthesize", {}), stages.get("select", {})
    c, s = syn.get("counts", {}), sel.get("counts", {})
    kept = s.get("kept", 0)
    mean = s.get("masked_fraction_ppm_sum", 0) / 1e6 / kept if kept else None
    tok = s.get("kept_assistant_tokens", 0)
    rate = syn.get("parse_rate")
    return {"yield": f"episodes {c.get('episodes', 0)} (+{c.get('golden_episodes', 0)} golden) -> judged steps "
                     f"{c.get('judged', 0)} -> interventions {c.get('interventions', 0)} -> successes "
                     f"{c.get('success', 0)} (+{c.get('golden_success', 0)} golden) -> kept {kept} "
                     f"({s.get('kept_self_reflected', 0)} self-reflected, {s.get('kept_golden', 0)} golden)",
            "verdicts": f"ok {c.get('verdict_ok', 0)}, error {c.get('verdict_error', 0)}, unparsed "
                        f"{c.get('verdict_unparsed', 0)} (handled as ok); corrections unparsed "
                        f"{c.get('corrections_unparsed', 0)}",
            "interventions vs the agent's step": f"better {c.get('intervention_better', 0)}, equal "
                                                 f"{c.get('intervention_equal', 0)}, worse "
                                                 f"{c.get('intervention_worse', 0)}; error verdicts on rewarded "
                                                 f"steps {c.get('errors_on_rewarded_steps', 0)}",
            "masked": ("n/a" if mean is None else
                       f"mean per kept row {mean:.3f}, max {s.get('masked_fraction_ppm_max', 0) / 1e6:.3f}, "
                       f"overall {s.get('kept_masked_tokens', 0) / tok if tok else 0:.3f} of assistant tokens"),
            "parse rate": f"agent turns {'n/a' if rate is None else f'{rate:.2f}'}"}


METHOD = register_method(Method(
    "step", "STeP: the teacher judges each agent step and corrects erroneous ones (reflection + corrected step "
            "executed in the env); successful trajectories with partial masking, golden ones mixed in",
    (StageSpec("synthesize", SynthesizeStage), StageSpec("select", SelectStage)),
    roles=("agent", "teacher"), exports={"sft": "sft_step", "sft-tokenized": "sft_tokenized_step", "dpo": "dpo_step"},
    summary=step_summary, home=Path(__file__).parent))
