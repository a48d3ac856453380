import pytest

from rewards.extract import completion_text, extract_code, has_code_block, program_for

F = "def f(x):\n    return x\n"
G = "def g(x):\n    return 2\n"

# (completion, entry point, expected code)
CASES = [
    (f"```python\n{F}```", "f", F),  # one fenced block
    (f"Sure!\n```py\n{F}```\nThat's it.", "f", F),  # prose around, py tag
    (f"```python\n{G}```\nand\n```python\n{F}```\n```python\nprint(f(1))\n```", "f", F),  # block defining f wins
    (f"```python\n{G}```\n```python\n{G.replace('2', '3')}```", "f", G.replace("2", "3")),  # else the last block
    (f"<think>```python\n{G}```</think>\n```python\n{F}```", None, F),  # think section dropped
    (f"<think>still thinking ```python\n{G}```", "g", ""),  # unterminated think: nothing usable
    (f"<|im_start|>assistant\n```python\n{F}```<|im_end|>", "f", F),  # chat tokens stripped
    (f"```python\n{F}", "f", F),  # truncated fence still counts
    (F, "f", F),  # no fence: the text itself
    (f"```bash\nls\n```\n```python\n{F}```", "f", F),  # non-Python fences ignored
    ("```\n" + F + "```", "f", F),  # untagged fence is Python
    ([{"role": "assistant", "content": f"```python\n{F}```"}], "f", F),  # TRL conversational completion
    ([{"role": "assistant", "content": [{"type": "text", "text": f"```python\n{F}```"}]}], "f", F),  # parts
    ("```python\nclass f:\n    pass\n```", "f", "class f:\n    pass\n"),  # class as entry point
]


@pytest.mark.parametrize("completion,entry_point,expected", CASES)
def test_extract_code(completion, entry_point, expected):
    assert extract_code(completion, entry_point) == expected


def test_completion_text_rejects_other_types():
    with pytest.raises(TypeError, match="list of messages"):
        completion_text(3)


@pytest.mark.parametrize("completion,has", [
    ("```python\nx\n```", True),  # python fence
    ("```bash\nls\n```", False),  # other language
    ("x = 1", False),  # no fence
])
def test_has_code_block(completion, has):
    assert has_code_block(completion) is has


def test_program_for_continues_only_a_python_stub():
    stub = 'def f(x):\n    """Double x."""\n'
    assert program_for(stub, "    return 2 * x", "f") == stub + "    return 2 * x\n"
    assert program_for(stub, f"```python\n{F}```", "f") == F  # fenced answers stand alone
    assert program_for(stub, "    return 2 * x", None) == "return 2 * x\n"  # no entry point: no stub to continue
    assert program_for("Write f.\n", F, "f") == F  # a natural-language prompt is never prepended
    assert program_for([{"role": "user", "content": stub}], "    return 2 * x", "f") == "return 2 * x\n"
