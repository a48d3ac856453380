"""Programs in languages other than Python, on the trusted side: plan their builds, compile (cached), make run jobs.

For each (program, spec) the evaluator gets a `Plan`: the build (sources, compile and run commands, from
`languages.py`) and how to turn the compiled files into run jobs. `compile_all` compiles every build that is not in
the cache, once per distinct build, as sandbox jobs of their own; then the run jobs carry the compiled files and, for
stdio tests, the input and expected output (judged by the supervisor), for call tests the expected answers (the
harness inside the program sees only the inputs; `rewards.harness`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rewards import harness
from rewards import spec as specs
from rewards.sandbox.compile_cache import CompileCache, Compiled
from rewards.sandbox.jobs import Job, Limits, Run
from rewards.sandbox.languages import Build, ToolchainMissing, language, run_argv
from rewards.sandbox.verdict import Outcome, make_outcome

log = logging.getLogger("rewards.sandbox")
COMPILE_TIMEOUT = "compiler timeout"
"""How the supervisor's detail of a compile stopped by its time limit begins (such results are not cached)."""


@dataclass
class Plan:
    """One program in another language against one spec."""

    lang: str
    build: Build
    key: str
    make_jobs: object
    """files (name -> bytes) -> the run jobs."""
    total: int
    """Tests of the spec (for outcomes decided before running)."""
    extra: dict = field(default_factory=dict)

    def decided(self, category: str, detail: str, stderr: str = "") -> Outcome:
        return make_outcome([category] * self.total, detail, stderr=stderr[:8192],
                            extra={"language": self.lang, **self.extra})


def plan(code: str, sp, limits: Limits) -> Plan | Outcome:
    """The plan for `code` against `sp` (whose `language` is not Python), or an Outcome decided already: a missing
    toolchain or a spec the harness cannot express is ours (sandbox_error), never the program's failure."""
    total = len(sp.cases)
    try:
        lang = language(sp.language)
        fingerprint = lang.fingerprint()
        if isinstance(sp, specs.StdioSpec):
            build = lang.build(code)
            make = _stdio_jobs(lang, build, sp, limits)
        elif isinstance(sp, specs.CallSpec):
            build, expected = harness.call_build(lang, code, sp)
            make = _call_jobs(lang, build, expected, limits)
        else:
            raise ValueError(f"{type(sp).__name__} tests run in Python only")
    except (ToolchainMissing, ValueError) as exc:
        log.error("sandbox: cannot run a %s program: %s", sp.language, exc)
        return make_outcome(["sandbox_error"] * total, str(exc), extra={"language": sp.language})
    return Plan(lang.name, build, build.key(fingerprint), make, total)


def _run_files(build: Build, files: dict) -> dict:
    return {n: t.encode() for n, t in build.sources.items()} if build.keep_sources else files


def _stdio_jobs(lang, build: Build, sp, limits: Limits):
    run_limits = lang.run_limits(limits)
    argv = run_argv(build, run_limits)

    def make(files: dict) -> list[Job]:
        files = _run_files(build, files)
        return [Job(code="", mode="stdio", language=lang.name, files=files, argv=argv, env=dict(lang.env),
                    seccomp_allow=lang.seccomp_allow, stdin=c.stdin, expected_stdout=c.stdout, stdout_match=sp.match,
                    limits=run_limits)
                for c in sp.cases]
    return make


def _call_jobs(lang, build: Build, expected: list, limits: Limits):
    run_limits = lang.run_limits(limits)
    argv = run_argv(build, run_limits)

    def make(files: dict) -> list[Job]:
        return [Job(code="", mode="call", language=lang.name, files=_run_files(build, files), argv=argv,
                    env=dict(lang.env), seccomp_allow=lang.seccomp_allow,
                    calls=[(i, []) for i in range(len(expected))], expected=expected, limits=run_limits)]
    return make


def compile_all(sandbox, plans: list[Plan], cache: CompileCache) -> dict[str, Compiled | Run]:
    """key -> Compiled (from the cache or a compile job), or the compile job's Run when it ended in sandbox_error."""
    results: dict[str, Compiled | Run] = {}
    todo: dict[str, Plan] = {}
    for p in plans:
        if p.key in results or p.key in todo:
            continue
        hit = cache.get(p.key)
        if hit is not None:
            results[p.key] = hit
        else:
            todo[p.key] = p
    if not todo:
        return results
    jobs = [_compile_job(p) for p in todo.values()]
    for (key, _), run in zip(todo.items(), sandbox.run(jobs), strict=True):
        messages = (run.stderr + run.stdout)[:8192]  # some compilers (Go's) report on stdout
        if run.category == "ok":
            compiled = Compiled(dict(run.artifact or {}), "", messages)
        elif run.category == "compile_error":
            compiled = Compiled(None, run.detail, messages)
        else:
            results[key] = run  # our fault: not cached, scored None
            continue
        if compiled.ok or not run.detail.startswith(COMPILE_TIMEOUT):
            cache.put(key, compiled)
        results[key] = compiled
    return results


def _compile_job(p: Plan) -> Job:
    lang = language(p.lang)
    return Job(code="", mode="compile", language=p.lang, files={n: t.encode() for n, t in p.build.sources.items()},
               steps=p.build.steps, collect=p.build.collect, env=lang.compile_env(), limits=lang.compile_limits,
               seccomp_allow=lang.seccomp_allow)


def failed(p: Plan, result: Compiled | Run) -> Outcome:
    """The outcome of a plan whose build did not compile (compile_error) or could not be compiled (sandbox_error)."""
    if isinstance(result, Run):
        return p.decided("sandbox_error", f"compiling failed on our side: {result.detail}")
    return p.decided("compile_error", result.detail, result.stderr)
