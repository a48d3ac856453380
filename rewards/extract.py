"""Code from completions: fenced blocks (preferring the one that defines the entry point), wrappers stripped.

Completions are strings or TRL conversational lists of messages ([{"role": "assistant", "content": ...}]).
"""

import ast
import functools
import re

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CHAT_TOKENS = re.compile(r"<\|(?:im_start|im_end|endoftext|eot_id|start_header_id|end_header_id)\|>(?:assistant)?")
_PY = {"", "python", "py", "python3"}


def completion_text(completion) -> str:
    """The assistant text of a completion (string, message dict, or list of messages)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content(completion.get("content", ""))
    if isinstance(completion, list | tuple):
        parts = [m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        return "\n".join(_content(m.get("content", "")) for m in parts)
    raise TypeError(f"completion must be a string or a list of messages, got {type(completion).__name__}")


def _content(content) -> str:
    if isinstance(content, list):  # multimodal-style [{"type": "text", "text": ...}]
        return "".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content)


def extract_code(completion, entry_point: str | None = None) -> str:
    """The program in a completion.

    Takes the fenced block that defines `entry_point` (the last such one), else the last Python block,
    else the unfenced text. Chat special tokens and <think>...</think> sections are removed first; an
    unterminated fence (a truncated completion) still counts.

    Example:
        >>> extract_code("<think>hmm</think>Here:\\n```python\\ndef f(x):\\n    return x\\n```\\nDone.", "f")
        'def f(x):\\n    return x\\n'
    """
    text = _CHAT_TOKENS.sub("", _THINK.sub("", completion_text(completion)))
    text = re.sub(r"<think>.*\Z", "", text, flags=re.DOTALL | re.IGNORECASE)  # unterminated thinking
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    python = [body for lang, body in blocks if lang in _PY]
    if entry_point:
        pattern = re.compile(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(entry_point)}\b", re.MULTILINE)
        defining = [body for body in python if pattern.search(body)]
        if defining:
            return defining[-1]
    if python:
        return python[-1]
    text = text.strip()
    return text + "\n" if text and "```" not in text else ""


def _defines(text: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(entry_point)}\b", text, re.MULTILINE) is not None


@functools.lru_cache(maxsize=4096)
def is_code_stub(prompt: str, entry_point: str) -> bool:
    """True if `prompt` is Python source (a plain, non-chat prompt) defining `entry_point` at its top level."""
    try:
        tree = ast.parse(prompt)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == entry_point
               for n in tree.body)


def program_for(prompt, completion, entry_point: str | None = None) -> str:
    """The program a completion stands for.

    A base model prompted with a code stub continues it (HumanEval's convention): when the prompt is plain Python
    source that defines `entry_point` and the completion neither fences code nor defines `entry_point` itself,
    the program is prompt + completion, indentation kept. Otherwise it is `extract_code(completion, entry_point)`.

    Example:
        >>> program_for("def f(x):\\n    'Double x.'\\n", "    return 2 * x\\n", "f")
        "def f(x):\\n    'Double x.'\\n    return 2 * x\\n"
    """
    if entry_point and isinstance(prompt, str):
        text = completion_text(completion)
        if "```" not in text and not _defines(text, entry_point) and is_code_stub(prompt, entry_point):
            return prompt + text + ("" if text.endswith("\n") else "\n")
    return extract_code(completion, entry_point)


def has_code_block(completion) -> bool:
    return any(lang.lower() in _PY for lang, _ in _FENCE.findall(completion_text(completion)))
