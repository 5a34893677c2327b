"""A recipe's template: a built-in name, or its own Jinja template (inline or a file next to the
recipe); checked at load with one-line errors naming the key; its text reaches the stages."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reprotune import plan, templates
from reprotune.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[1]
KEY = "key 'adapters.main.template"
OWN = ("{#- my format -#}{%- for m in messages -%}"
       "{%- if m['role'] == 'assistant' -%}{{- 'Bot: ' -}}{%- generation -%}{{- m['content'] + eos_token -}}"
       "{%- endgeneration -%}{{- '\\n' -}}{%- else -%}{{- m['role'] + ': ' + m['content'] + '\\n' -}}{%- endif -%}"
       "{%- endfor -%}{%- if add_generation_prompt -%}{{- 'Bot: ' -}}{%- endif -%}")


def _write(tmp_path: Path, template) -> Path:
    data = yaml.safe_load((REPO / "recipes" / "tulu-v2-qlora-70b.yaml").read_text())
    data["adapters"]["main"]["template"] = copy.deepcopy(template)
    path = tmp_path / "tulu-v2-qlora-70b.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _error(tmp_path, template) -> str:
    path = _write(tmp_path, template)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg[len(f"{path}: "):]


def test_builtin_name_stays_a_name(tmp_path):
    r = load_recipe(_write(tmp_path, "zephyr"))
    assert r["adapters"]["main"]["template"] == "zephyr"
    assert plan.train_spec(r, "main")["template"] == "zephyr"


def test_inline_template(tmp_path):
    r = load_recipe(_write(tmp_path, {"name": "mine", "chat_template": OWN}))
    assert r["adapters"]["main"]["template"] == {"name": "mine", "chat_template": OWN}
    t = templates.get(plan.train_spec(r, "main")["template"])
    assert t.name == "mine" and t.chat_template == OWN
    assert t.render_segments({"system": "S", "messages": [{"role": "user", "content": "Q"},
                                                          {"role": "assistant", "content": "A"}]}, "</s>") == \
        [("system: S\nuser: Q\nBot: ", False), ("A</s>", True), ("\n", False)]
    assert plan.prompt_example(r) == ("system: You are a helpful assistant.\nuser: What is the capital of France?\n"
                                      "Bot: The capital of France is Paris.</s>\n")


def test_template_file_relative_to_the_recipe(tmp_path):
    (tmp_path / "formats").mkdir()
    (tmp_path / "formats" / "mine.jinja").write_text(OWN)
    path = _write(tmp_path, {"name": "mine", "path": "formats/mine.jinja"})
    r = load_recipe(path, REPO / "overlays" / "tiny.yaml")
    # self-contained: the stages get the text, not a path to resolve
    for spec in (plan.train_spec(r, "main"), plan.tokenize_spec(r, "main"), plan.mix_spec(r, "main")):
        assert spec["template"] == {"name": "mine", "chat_template": OWN}
    # editing the file changes the specs (rule params): tokenize, train (and what follows) rerun
    before = plan.dumps(plan.tokenize_spec(r, "main")), plan.dumps(plan.train_spec(r, "main"))
    (tmp_path / "formats" / "mine.jinja").write_text(OWN.replace("Bot: ", "Assistant: "))
    r2 = load_recipe(path, REPO / "overlays" / "tiny.yaml")
    after = plan.dumps(plan.tokenize_spec(r2, "main")), plan.dumps(plan.train_spec(r2, "main"))
    assert before[0] != after[0] and before[1] != after[1]
    assert plan.mix_spec(r, "main")["seed"] == plan.mix_spec(r2, "main")["seed"]


def test_code_inputs_name_the_template_file():
    r = load_recipe(REPO / "recipes" / "tulu-v2-qlora-70b.yaml")
    tulu = str(templates.CHAT_DIR / "tulu.jinja")
    pkg = [str(templates.CHAT_DIR.parent / f) for f in ("__init__.py", "base.py", "engine.py")]
    for stage in ("tokenize", "train", "mix"):
        files = plan.code_inputs(stage, r, "main")
        assert tulu in files and set(pkg) <= set(files), stage
        assert not any(f.endswith(".jinja") and f != tulu for f in files), stage
    assert not any(f.endswith(".jinja") for f in plan.code_inputs("mix"))  # the mix rule: no recipe
    own = copy.deepcopy(r)
    own["adapters"]["main"]["template"] = {"name": "mine", "chat_template": OWN}
    assert not any(f.endswith(".jinja") for f in plan.code_inputs("train", own, "main"))
    pkg_dir = str(templates.CHAT_DIR.parent)
    assert not any(f.startswith(pkg_dir) for f in plan.code_inputs("merge") + plan.code_inputs("evaluate"))


@pytest.mark.parametrize("template,expected", [
    ("vicuna", f"{KEY}': 'vicuna' is not allowed (expected a built-in template: alpaca, chatml, fashiongpt, "
               "llama2_chat, mistral_instruct, oasst, orca_mini, raw, tulu, vicuna_v1.1, zephyr;"),
    ({"name": "mine", "chat_template": "{% for m in messages %}\n{{ m['content'] }\n{% endfor %}"},
     f"{KEY}.chat_template': Jinja syntax error at line 2: unexpected '}}'"),
    ({"name": "mine", "chat_template": "{{ messages[0]['content'] }}"},
     f"{KEY}.chat_template': no {{% generation %}} block: the trained part of each assistant turn"),
    ({"name": "mine", "path": "nowhere/mine.jinja"}, f"{KEY}.path': no such file 'nowhere/mine.jinja' (relative to "),
    ({"name": "mine", "chat_template": OWN, "path": "mine.jinja"},
     f"{KEY}': give either 'chat_template' or 'path', not both"),
    ({"name": "mine"}, f"{KEY}': needs 'chat_template' (the Jinja text) or 'path'"),
    ({"name": "tulu", "chat_template": OWN}, f"{KEY}.name': 'tulu' is a built-in template"),
    ({"name": "mine", "chat_template": OWN, "colour": 1}, f"unknown key '{KEY[5:]}.colour' (expected one of: "
                                                          "chat_template, name, path)"),
    ({"chat_template": OWN}, f"missing required key '{KEY[5:]}.name'"),
    ({"name": "my format", "chat_template": OWN}, f"{KEY}.name': 'my format' does not match"),
    (3, f"{KEY}': 3 has the wrong type (expected string or object)"),
])
def test_template_errors_name_the_key(tmp_path, template, expected):
    assert _error(tmp_path, template).startswith(expected)


def test_syntax_error_in_a_template_file_names_file_and_line(tmp_path):
    (tmp_path / "bad.jinja").write_text("{#- doc\n-#}\n{% generation %}{{ messages[0] }}{% endgeneration %}\n"
                                        "{% if x %}")
    assert _error(tmp_path, {"name": "mine", "path": "bad.jinja"}) == (
        f"{KEY}.path': bad.jinja: Jinja syntax error at line 4: Unexpected end of template. Jinja was looking "
        "for the following tags: 'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'.")


def test_validate_cli_prints_one_line(tmp_path):
    path = _write(tmp_path, {"name": "mine", "chat_template": "{{ messages[0]['content'] }}"})
    p = subprocess.run([sys.executable, "-m", "reprotune", "validate", str(path)], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines()[-1] == (
        f"reprotune: error: {path}: {KEY}.chat_template': no {{% generation %}} block: the trained part of each "
        "assistant turn must sit inside {% generation %}...{% endgeneration %}")
    assert "Traceback" not in p.stderr


def test_specs_survive_json(tmp_path):
    """Rules pass specs as JSON on the command line: the template text survives the round trip."""
    r = load_recipe(_write(tmp_path, {"name": "mine", "chat_template": OWN}))
    spec = json.loads(plan.dumps(plan.train_spec(r, "main")))
    assert templates.get(spec["template"]).chat_template == OWN
