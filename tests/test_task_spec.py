"""Task declarations, the task and tool registries, entry points and the tool contract."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lightning_nat.core import tasks as task_table
from lightning_nat.core import tools as tool_table
from lightning_nat.core.imports import DeclarationError
from lightning_nat.core.tasks import TASKS, get_task, load_task_file, register_task
from lightning_nat.core.tools import make_tools, register_tool


@pytest.fixture
def clean_registry():
    """Whatever a test registers is removed afterwards (the registries are process-wide)."""
    tasks, tools = dict(TASKS), dict(tool_table.TOOLS)
    loaded = (set(tool_table._entry_points_loaded), task_table._entry_points_loaded)
    yield
    TASKS.clear()
    TASKS.update(tasks)
    tool_table.TOOLS.clear()
    tool_table.TOOLS.update(tools)
    tool_table._entry_points_loaded.clear()
    tool_table._entry_points_loaded.update(loaded[0])
    task_table._entry_points_loaded = loaded[1]


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_tasks_are_declarations():
    folder = Path(__file__).resolve().parents[1] / "lightning_nat" / "taskdefs"
    declared = {p.stem for p in folder.glob("*.yaml")}
    assert declared == {"gsm8k", "asdiv", "svamp", "multiarith", "hotpotqa", "strategyqa"}
    for name in declared:
        assert TASKS[name].source == str(folder / f"{name}.yaml")
    # The demo's task is not in the core table until the demo registers it.
    assert "arith" not in {p.stem for p in folder.glob("*")}
    assert TASKS["hotpotqa"].score("the Eiffel Tower", {"answer": "Eiffel Tower"})[:2] == (True, 1.0)
    assert TASKS["gsm8k"].score("1,018", {"answer": "so #### 1018"})[0] is True


def test_yaml_task_with_file_tool_and_metric(tmp_path, clean_registry):
    _write(tmp_path, "mytools.py", '''
        def shout(text):
            """Upper-cases the text."""
            return text.upper()

        def same(prediction, gold):
            return prediction == gold, 0.25
    ''')
    _write(tmp_path, "q.jsonl", '{"qid": "a", "prompt": "say hi", "gold": "HI"}\n')
    task_file = _write(tmp_path, "shouting.yaml", '''
        instruction: "Shout the answer. Tools:\\n{tools}"
        tools: [mytools.py:shout]
        metric: mytools.py:same
        data: {file: q.jsonl, fields: {id: qid, question: prompt, answer: gold}}
        prompt_style: native
    ''')
    task = get_task(str(task_file))  # a path works wherever a name does, and registers the task
    assert task.name == "shouting" and TASKS["shouting"] is task
    assert task.tools == ("shout", "finish") and task.prompt_style == "native"
    assert "- shout[argument]: Upper-cases the text." in task.instruction
    assert make_tools(task.tools)["shout"]("hi") == "HI"
    from lightning_nat.core.tasks import load_questions_for

    records = load_questions_for(task)
    assert records[0]["id"] == "a" and records[0]["question"] == "say hi"
    assert task.score("HI", records[0]) == (True, 0.25, {"accuracy": 1.0, "score": 0.25})
    assert task.score("hi", records[0])[0] is False
    # Loading the same file again (however its path is written) is the same task, not a clash.
    assert get_task(str(task_file)).name == "shouting"
    assert get_task(str(tmp_path / "." / "shouting.yaml")).name == "shouting"
    other = _write(tmp_path, "other.yaml", "name: shouting\ninstruction: x\nmetric: exact\n")
    with pytest.raises(ValueError, match="already registered"):
        get_task(str(other))


@pytest.mark.parametrize("field,value,expected", [
    ("tools", "[nosuchmodule_xyz:run]", "field 'tools[0]': cannot import 'nosuchmodule_xyz:run'"),
    ("tools", "[lightning_nat.core.metrics:nope]",
     "field 'tools[0]': 'lightning_nat.core.metrics:nope': module 'lightning_nat.core.metrics' has no attribute 'nope'"),
    ("tools", "[os:system]", "field 'tools[0]': 'os:system' is an installed module's"),
    ("metric", "subprocess:getoutput", "field 'metric': 'subprocess:getoutput' is an installed module's"),
    ("tools", "[teleport]", "field 'tools[0]': unknown tool 'teleport'"),
    ("tools", "[missing.py:f]", "field 'tools[0]': 'missing.py:f': no such file"),
    ("metric", "nosuchmodule_xyz:score", "field 'metric': cannot import 'nosuchmodule_xyz:score'"),
    ("metric", "fuzzy", "field 'metric': unknown metric 'fuzzy'"),
    ("instruction", "{what: x}", "field 'instruction'"),
    ("colour", "red", "field 'colour': unknown field"),
])
def test_bad_declarations_name_the_file_and_the_field(tmp_path, clean_registry, field, value, expected):
    decl = {"instruction": "Do it.", "tools": "[finish]", "metric": "exact", field: value}
    path = tmp_path / "bad.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in decl.items()))
    with pytest.raises(DeclarationError) as err:
        load_task_file(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


def test_cli_reports_a_bad_tool_path_in_one_line(tmp_path):
    path = _write(tmp_path, "t.yaml", "instruction: Do it.\ntools: [nosuchmodule_xyz:run]\nmetric: exact\n")
    traj = _write(tmp_path, "t.jsonl", '{"messages": [{"role": "user", "content": "q"}, '
                                      '{"role": "assistant", "content": "Action: finish[a]"}], "reward": true}\n')
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "build", "--format", "openai", "--trajectories",
                           str(traj), "--task", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert f"{path}: field 'tools[0]': cannot import 'nosuchmodule_xyz:run'" in " ".join(proc.stderr.split())
    assert not (tmp_path / "out").exists()


def test_unknown_task_name_lists_known_ones_and_suggests_a_file():
    with pytest.raises(ValueError, match="unknown task 'mytask'.*gsm8k.*task YAML"):
        get_task("mytask")
    with pytest.raises(FileNotFoundError, match="no such task file"):
        get_task("nowhere/task.yaml")


def test_register_task_and_tool_from_python(clean_registry):
    def reverse(text: str) -> str:
        """Reverses the text."""
        return text[::-1]

    register_tool("reverse", reverse)
    task = register_task({"name": "rev", "instruction": {"what": "a reversal", "answer": "the text"},
                          "tools": ["reverse"], "metric": "exact"})
    assert get_task("rev") is task and "reverse[argument]: Reverses the text." in task.instruction
    assert register_tool("reverse", reverse).function is reverse  # the same function again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_tool("reverse", lambda s: s)
    with pytest.raises(ValueError, match="already registered"):
        register_task({"name": "gsm8k", "instruction": "x", "metric": "exact"})
    assert register_task({"name": "rev", "instruction": {"what": "a reversal", "answer": "the text"},
                          "tools": ["reverse"], "metric": "exact"}).name == "rev"  # the same declaration again
    with pytest.raises(ValueError, match="already registered"):
        register_task({"name": "rev", "instruction": "Something else.", "metric": "exact"})
    with pytest.raises(ValueError, match="built in"):
        register_tool("calculate", reverse)
    with pytest.raises(ValueError, match="lower-case"):
        register_tool("Reverse", reverse)


def test_entry_points_register_tasks_and_tools(tmp_path, monkeypatch, clean_registry):
    pkg = tmp_path / "natplugin_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        def lookup(key):
            """Looks a key up."""
            return {"a": "1"}.get(key.strip(), "not found")

        TASK = {"instruction": "Look it up.", "tools": ["lookup"], "metric": "exact"}
    '''))
    dist = tmp_path / "natplugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: natplugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lightning_nat.tools]\ncalculate = natplugin_demo:lookup\n"
                                           "lookup = natplugin_demo:lookup\n\n"
                                           "[lightning_nat.tasks]\nplugged = natplugin_demo:TASK\n"
                                           "arith = lightning_nat.demo.synthetic:arith_task\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tool_table._entry_points_loaded.clear()
    task_table._entry_points_loaded = False
    TASKS.pop("arith", None)
    # A plug-in tool named like a built-in is named in a warning and skipped; the plug-in's other tools still load.
    with pytest.warns(UserWarning, match=r"entry point calculate = natplugin_demo:lookup: not registered: tool name "
                                         r"'calculate' is built in"):
        task = get_task("plugged")
    assert task.tools == ("lookup", "finish") and make_tools(task.tools)["lookup"]("a") == "1"
    assert make_tools(("calculate",))["calculate"]("2+3") == "5"  # the built-in, untouched
    assert get_task("arith").tools == ("calculate", "finish")  # the demo's task, as setup.cfg declares it


def test_tool_contract_errors_timeouts_and_non_strings(clean_registry):
    def boom(text):
        raise RuntimeError(f"bad input {text}")

    def slow(text):
        time.sleep(5)
        return "late"

    register_tool("boom", boom)
    register_tool("slow", slow, timeout=0.2)
    register_tool("number", lambda text: len(text))
    register_tool("huge", lambda text: "x" * 10_000)
    tools = make_tools(("boom", "slow", "number", "huge", "finish"))
    assert tools["boom"]("q") == "Error: RuntimeError: bad input q"
    assert tools["slow"]("q") == "Error: slow timed out after 0.2 s"
    assert tools["number"]("abc") == "3"
    assert tools["huge"]("").endswith("(cut at 2000 characters)") and len(tools["huge"]("")) < 2100


def test_a_tool_error_never_shows_an_api_key(clean_registry, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")

    def leaky(text):
        raise ConnectionError("GET https://api.example/v1?key=sk-secret-123 failed")

    register_tool("leaky", leaky)
    assert make_tools(("leaky",))["leaky"]("x") == "Error: ConnectionError: GET https://api.example/v1?key=*** failed"


def test_agent_turns_a_tool_failure_into_an_observation(clean_registry):
    from lightning_nat.agent.react import ReActAgent

    def fragile(text):
        """Fails on purpose."""
        raise KeyError(text)

    register_tool("fragile", fragile)
    task = register_task({"name": "fragile_task", "instruction": "Use {tools}", "tools": ["fragile"],
                          "metric": "exact"})

    class Scripted:
        def generate(self, prompts):
            return ["Action: fragile[k]" if len(p) == 2 else "Action: finish[k]" for p in prompts]

    traj = ReActAgent(task, Scripted(), make_tools(task.tools)).run([{"id": "1", "question": "q", "answer": "k"}])[0]
    assert traj.messages[1]["content"] == "Observation: Error: KeyError: 'k'" and traj.reward
