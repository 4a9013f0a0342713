"""Write this folder's tiny offline material for `nat iterate`: arith questions and a scripted teacher's trajectories.

    python examples/iterate/make_fixture.py examples/iterate

train.jsonl (12 questions), held_out.jsonl (4 others) and teacher.jsonl: the demo's scripted teacher
(lightning_nat/demo/synthetic.py) run through the real agent loop and calculator on the training
questions at temperatures 0.2 and 0.7, labelled by the task's metric. Same seed, same files.
"""

import json
import sys
from pathlib import Path

from lightning_nat.agent.collect import collect
from lightning_nat.agent.react import ReActAgent
from lightning_nat.core.tools import make_tools
from lightning_nat.demo.synthetic import ScriptedTeacher, arith_task, make_problems


def main(out: Path) -> None:
    task = arith_task()
    problems = make_problems(16, seed=0, min_steps=2, max_steps=2)
    train, held_out = problems[:12], problems[12:]
    for name, part in (("train.jsonl", train), ("held_out.jsonl", held_out)):
        (out / name).write_text("".join(json.dumps(p.record()) + "\n" for p in part))
    (out / "teacher.jsonl").unlink(missing_ok=True)
    teacher = ScriptedTeacher({p.question: p for p in train}, error_rate=0.6, seed=0)
    collect(ReActAgent(task, teacher, make_tools(task.tools), max_turns=4), [p.record() for p in train],
            out / "teacher.jsonl", (0.2, 0.7), teacher="scripted")
    (out / ".teacher.jsonl.lock").unlink(missing_ok=True)  # collect's lock file, not part of the material


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
