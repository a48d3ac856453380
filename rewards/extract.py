"""Code from completions: fenced blocks (preferring the one that defines the entry point), wrappers stripped.

Completions are strings or TRL conversational lists of messages ([{"role": "assistant", "content": ...}]). Code in
another language than Python comes from the blocks tagged with that language (```cpp, ```rust, ...; the tags of
`rewards.sandbox.languages`), else from untagged blocks.
"""

import ast
import functools
import re

from rewards.sandbox.languages import canonical_language

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


def _clean(completion) -> str:
    text = _CHAT_TOKENS.sub("", _THINK.sub("", completion_text(completion)))
    return re.sub(r"<think>.*\Z", "", text, flags=re.DOTALL | re.IGNORECASE)  # unterminated thinking


def fence_language(completion) -> str | None:
    """The language of the last fenced block whose tag names one the sandbox runs ("python", "cpp", ...), or None.

    Example:
        >>> fence_language("```c++\\nint main() {}\\n```")
        'cpp'
    """
    found = [canonical_language(tag) for tag, _ in _FENCE.findall(_clean(completion))]
    return next((lang for lang in reversed(found) if lang is not None), None)


def extract_code(completion, entry_point: str | None = None, language: str = "python") -> str:
    """The program in a completion.

    Takes the fenced block that defines `entry_point` (the last such one), else the last Python block,
    else the unfenced text. Chat special tokens and <think>...</think> sections are removed first; an
    unterminated fence (a truncated completion) still counts. For another `language`, the blocks tagged with it
    (else untagged ones) take the place of Python's, and the preferred one is the last that names `entry_point`.

    Example:
        >>> extract_code("<think>hmm</think>Here:\\n```python\\ndef f(x):\\n    return x\\n```\\nDone.", "f")
        'def f(x):\\n    return x\\n'
    """
    text = _clean(completion)
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    if language != "python":
        return _other_language(text, blocks, entry_point, language)
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


def _other_language(text: str, blocks: list, entry_point: str | None, language: str) -> str:
    tagged = [body for tag, body in blocks if canonical_language(tag) == language]
    candidates = tagged or [body for tag, body in blocks if not tag]
    if entry_point and candidates:
        name = re.compile(rf"\b{re.escape(entry_point.rpartition('.')[2])}\b")
        naming = [body for body in candidates if name.search(body)]
        if naming:
            return naming[-1]
    if candidates:
        return candidates[-1]
    text = text.strip()
    return text + "\n" if text and "```" not in text else ""


_DECLARES = {
    "cpp": r"\b{name}\s*\([^;{{]*\)\s*(?:const\s*)?\{{",
    "java": r"\b{name}\s*\([^;{{]*\)\s*(?:throws[^{{]*)?\{{",
    "javascript": r"(?:\bfunction\s+{name}\s*\(|\b{name}\s*=)",
    "rust": r"\bfn\s+{name}\b",
    "go": r"\bfunc\s+{name}\b",
}


def declares(text: str, entry_point: str, language: str) -> bool:
    """True if `text` holds a definition of `entry_point` in `language` (a heuristic per language's syntax)."""
    if language == "python":
        return _defines(text, entry_point)
    name = re.escape(entry_point.rpartition(".")[2])
    return re.search(_DECLARES[language].format(name=name), text) is not None


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


def program_for(prompt, completion, entry_point: str | None = None, language: str = "python") -> str:
    """The program a completion stands for.

    A base model prompted with a code stub continues it (HumanEval's convention; MultiPL-E's in other languages):
    when the prompt is plain source that defines `entry_point` (Python: parses and defines it at top level; other
    languages: ends with the open body of its definition) and the completion neither fences code nor defines
    `entry_point` itself, the program is prompt + completion, indentation kept. Otherwise it is
    `extract_code(completion, entry_point, language)`.

    Example:
        >>> program_for("def f(x):\\n    'Double x.'\\n", "    return 2 * x\\n", "f")
        "def f(x):\\n    'Double x.'\\n    return 2 * x\\n"
    """
    if entry_point and isinstance(prompt, str):
        text = completion_text(completion)
        if "```" not in text and not declares(text, entry_point, language) and \
                is_stub(prompt, entry_point, language):
            return prompt + text + ("" if text.endswith("\n") else "\n")
    return extract_code(completion, entry_point, language)


def is_stub(prompt: str, entry_point: str, language: str = "python") -> bool:
    """True if a plain (non-chat) prompt is source code to continue: for Python, it parses and defines `entry_point`
    at top level (`is_code_stub`); for another language, it ends with the open body of `entry_point`'s definition."""
    if language == "python":
        return is_code_stub(prompt, entry_point)
    return prompt.rstrip().endswith("{") and declares(prompt, entry_point, language)


def has_code_block(completion, language: str = "python") -> bool:
    """True if the completion holds a fenced block of `language` (for Python, also an untagged one)."""
    tags = [lang.lower() for lang, _ in _FENCE.findall(completion_text(completion))]
    if language == "python":
        return any(tag in _PY for tag in tags)
    return any(canonical_language(tag) == language for tag in tags)
