"""The languages the sandbox runs besides Python: how each compiles (if at all), how it runs, and with what limits.

Every command here runs inside the sandbox (`_native.py`), with the same layers as a Python program: the compile
step is a job of its own, with its own budget (compilers need more memory, time and processes than the programs
they build), outside the program's time; its failures are `compile_error`. The compiled files come back to the
trusted side, are cached by a hash of everything that went in (`compile_cache.py`), and go into each run's private
/tmp/app. Toolchains are the ordinary distribution packages, found under /usr (the sandbox's root shows /usr, /lib,
/bin, /sbin and /etc of the host and nothing else, so a toolchain installed in a home directory is not usable):

    language     fence tags                 needs (Debian/Ubuntu)          run
    cpp          cpp c++ cxx cc             g++                            the binary (C++17, -O1)
    java         java                       openjdk-17-jdk-headless        java -cp /tmp/app Main-class
    javascript   javascript js node         nodejs                         node prog.js (compile = node --check)
    rust         rust rs                    rustc                          the binary (edition 2021, -O1)
    go           go golang                  golang-go (a Go that ships     the binary (go tool compile + link)
                                            its compiled standard library,
                                            as Debian's 1.19 does)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace

from rewards.sandbox.jobs import Limits

SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin"
"""Where toolchains are looked up: directories the sandbox's root shows (never a home directory or PATH)."""
VISIBLE = ("/usr/", "/bin/", "/sbin/", "/lib", "/etc/")
SRC, OUT, APP = "/tmp/src", "/tmp/out", "/tmp/app"


class ToolchainMissing(RuntimeError):
    """A language's compiler or runtime is not installed where the sandbox can run it."""


@dataclass(frozen=True)
class Build:
    """What to compile and run for one program: sources and the commands (paths inside the sandbox)."""

    language: str
    sources: dict
    """file name -> text, written to /tmp/src."""
    steps: list
    """Compile commands, run in turn."""
    collect: list
    """/tmp/out files that make the compiled program ("*.class": a suffix)."""
    argv: list
    """The run command; its files are in /tmp/app."""
    keep_sources: bool = False
    """Run from the sources themselves (an interpreter: the compile step only checks them)."""

    def key(self, fingerprint: str) -> str:
        """The compile cache's key: everything the compiled files depend on."""
        blob = json.dumps([self.language, fingerprint, self.steps, self.collect, sorted(self.sources.items())])
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Language:
    name: str
    display: str
    aliases: tuple[str, ...]
    tools: tuple[str, ...]
    """Executables it needs, looked up in SEARCH_PATH."""
    install: str
    """How to install them (Debian/Ubuntu)."""
    compile_limits: Limits
    startup_s: float = 0.5
    """Added to a run's wall-clock limit: starting the runtime is not the program's time."""
    run_memory_floor_mb: int = 0
    """A run's memory limit is at least this (a VM's own footprint)."""
    run_address_space_mb: int = 0
    """A run's address-space rlimit is at least this (a JVM reserves its heap and more up front; the memory cgroup
    still holds the tree to the run's memory limit)."""
    run_processes: int = 32
    """A run's pids limit is at least this (a VM's own threads count)."""
    run_open_files: int = 64
    env: dict = field(default_factory=dict)
    """Environment of runs (compile steps get `compile_env`)."""
    seccomp_allow: str = ""
    """A syscall the sandbox otherwise denies that this runtime needs (`Job.seccomp_allow`)."""

    def paths(self) -> dict[str, str]:
        return _resolve(self.tools, self.install)

    def available(self) -> bool:
        try:
            self.paths()
            return True
        except ToolchainMissing:
            return False

    def fingerprint(self) -> str:
        """Identifies the installed toolchain (paths, sizes, modification times): a new compiler, a new cache key."""
        return _fingerprint(tuple(sorted(self.paths().values())))

    def run_limits(self, base: Limits) -> Limits:
        memory = max(base.memory_mb, self.run_memory_floor_mb)
        space = max(base.address_space_mb or base.memory_mb, memory, self.run_address_space_mb)
        return replace(base, timeout=base.timeout + self.startup_s, memory_mb=memory,
                       address_space_mb=space if space > memory else None,
                       max_processes=max(base.max_processes, self.run_processes),
                       open_files=max(base.open_files, self.run_open_files), disk_mb=max(base.disk_mb, 64))

    def compile_env(self) -> dict:
        return {}

    def build(self, program: str, harness: str | None = None, main: str | None = None, prelude: str = "") -> Build:
        """The build of `program` alone (stdio) or with a generated call `harness` (see `rewards.harness`); a
        `prelude` goes before the program (C++: the headers the harness's arguments need)."""
        raise NotImplementedError


def _compile_limits(timeout: float = 30.0, memory_mb: int = 2048, processes: int = 64) -> Limits:
    return Limits(timeout=timeout, memory_mb=memory_mb, disk_mb=256, max_processes=processes, open_files=1024,
                  output_bytes=256 << 10, answer_bytes=64 << 20)


@functools.cache
def _resolve(tools: tuple[str, ...], install: str) -> dict[str, str]:
    found = {}
    for tool in tools:
        path = shutil.which(tool, path=SEARCH_PATH)
        real = os.path.realpath(path) if path else None
        if real is None or not real.startswith(VISIBLE):
            raise ToolchainMissing(f"{tool} is not installed under /usr (the sandbox runs toolchains from there); "
                                   f"install it with: {install}")
        found[tool] = real
    return found


@functools.cache
def _fingerprint(paths: tuple[str, ...]) -> str:
    parts = []
    for p in paths:
        st = os.stat(p)
        parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _rename_main(program: str, pattern: str, new: str) -> str:
    """The program's own entry point (a `main` it wrote to try things) renamed, so that the harness's is the one."""
    return re.sub(pattern, new, program)


class Cpp(Language):
    def build(self, program, harness=None, main=None, prelude=""):
        gxx = self.paths()["g++"]
        source = program if harness is None else \
            prelude + _rename_main(program, r"\bint\s+main\s*\(", "int sbx_program_main(") + "\n" + harness
        return Build("cpp", {"main.cpp": source},
                     [[gxx, "-std=c++17", "-O1", "-pipe", "-w", "-o", f"{OUT}/prog", f"{SRC}/main.cpp"]],
                     ["prog"], [f"{APP}/prog"])


class Rust(Language):
    def build(self, program, harness=None, main=None, prelude=""):
        rustc = self.paths()["rustc"]
        source = program if harness is None else \
            _rename_main(program, r"\bfn\s+main\s*\(", "fn sbx_program_main(") + "\n" + harness
        return Build("rust", {"main.rs": source},
                     [[rustc, "--edition", "2021", "-C", "opt-level=1", "-C", "debuginfo=0", "-C", "strip=symbols",
                       "-A", "warnings", "-o", f"{OUT}/prog", f"{SRC}/main.rs"]], ["prog"], [f"{APP}/prog"])


_GO_PACKAGE = re.compile(r"^\s*package\s+\w+", re.MULTILINE)


class Go(Language):
    def paths(self):
        found = dict(super().paths())
        found.update(_go_tools(found["go"], self.install))
        return found

    def compile_env(self):
        return {"GOROOT": self.paths()["goroot"], "GOCACHE": "/tmp/gocache"}

    def build(self, program, harness=None, main=None, prelude=""):
        tools = self.paths()
        source = _GO_PACKAGE.sub("package main", program, count=1)
        if not _GO_PACKAGE.search(source):
            source = "package main\n\n" + source
        sources = {"main.go": source}
        if harness is not None:
            sources["main.go"] = _rename_main(source, r"\bfunc\s+main\s*\(", "func sbxProgramMain(")
            sources["sbx_harness.go"] = harness  # its own file: its own imports
        files = [f"{SRC}/{n}" for n in sources]
        return Build("go", sources,
                     [[tools["compile"], "-p", "main", "-o", f"{OUT}/main.o", *files],
                      [tools["link"], "-s", "-w", "-o", f"{OUT}/prog", f"{OUT}/main.o"]],
                     ["prog"], [f"{APP}/prog"])


@functools.cache
def _go_tools(go: str, install: str) -> dict[str, str]:
    """GOROOT and its compile/link tools, asked once from the installed `go` (trusted, outside the sandbox)."""
    try:
        out = subprocess.run([go, "env", "GOROOT", "GOTOOLDIR", "GOOS", "GOARCH"], capture_output=True, text=True,
                             timeout=60, env={"PATH": SEARCH_PATH, "HOME": "/nonexistent", "GOCACHE": "off"})
        goroot, tooldir, goos, goarch = out.stdout.split()
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise ToolchainMissing(f"`{go} env` failed ({exc}); install Go with: {install}") from None
    if not os.path.exists(f"{goroot}/pkg/{goos}_{goarch}/fmt.a"):
        raise ToolchainMissing(f"Go at {goroot} ships no compiled standard library ({goroot}/pkg/{goos}_{goarch}); "
                               f"the sandbox compiles with `go tool compile`, which needs one: {install}")
    return {"goroot": goroot, "compile": f"{tooldir}/compile", "link": f"{tooldir}/link"}


_JAVA_PUBLIC = re.compile(r"^\s*public\s+(?:final\s+|abstract\s+)*class\s+([A-Za-z_$][\w$]*)", re.MULTILINE)
_JAVA_MAIN = re.compile(r"class\s+([A-Za-z_$][\w$]*)[^{]*\{(?:(?!\bclass\b).)*?public\s+static\s+void\s+main\s*\(",
                        re.DOTALL)
_JAVA_PACKAGE = re.compile(r"^\s*package\s+[\w.]+\s*;", re.MULTILINE)
JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-XX:-UsePerfData",
             "-XX:CompressedClassSpaceSize=64m", "-XX:ReservedCodeCacheSize=48m", "-Xss64m")


class Java(Language):
    def build(self, program, harness=None, main=None, prelude=""):
        tools = self.paths()
        source = _JAVA_PACKAGE.sub("", program)  # one unnamed package: the harness and the program meet there
        public = _JAVA_PUBLIC.search(source)
        name = public.group(1) if public else ("Problem" if harness is not None else "Main")
        if harness is not None:
            source += "\n" + harness
            main = main or "SbxHarness"
        else:
            found = _JAVA_MAIN.search(source)
            main = found.group(1) if found else name
        compile_flags = [f"-J{f}" for f in JVM_FLAGS if not f.startswith("-Xss")] + ["-J-Xmx768m"]
        return Build("java", {f"{name}.java": source},
                     [[tools["javac"], *compile_flags, "-encoding", "UTF-8", "-nowarn", "-d", OUT,
                       f"{SRC}/{name}.java"]],
                     ["*.class"], [tools["java"], *JVM_FLAGS, "-Xmx{heap}m", "-cp", APP, main])


class JavaScript(Language):
    def build(self, program, harness=None, main=None, prelude=""):
        node = self.paths()["node"]
        source = program if harness is None else program + "\n" + harness
        return Build("javascript", {"prog.js": source}, [[node, "--check", f"{SRC}/prog.js"]], [],
                     [node, "--stack-size=4000", f"{APP}/prog.js"], keep_sources=True)


LANGUAGES: dict[str, Language] = {
    "cpp": Cpp("cpp", "C++", ("cpp", "c++", "cxx", "cc", "cplusplus"), ("g++",), "apt-get install -y g++",
               _compile_limits()),
    "java": Java("java", "Java", ("java",), ("javac", "java"), "apt-get install -y openjdk-17-jdk-headless",
                 _compile_limits(processes=128), startup_s=2.0, run_memory_floor_mb=512, run_address_space_mb=4096,
                 run_processes=64, run_open_files=256, seccomp_allow="socketpair"),
    "javascript": JavaScript("javascript", "JavaScript", ("javascript", "js", "node", "nodejs"), ("node",),
                             "apt-get install -y nodejs", _compile_limits(processes=64), startup_s=1.0,
                             run_processes=64, run_open_files=256),
    "rust": Rust("rust", "Rust", ("rust", "rs"), ("rustc", "cc"), "apt-get install -y rustc", _compile_limits()),
    "go": Go("go", "Go", ("go", "golang"), ("go",), "apt-get install -y golang-go", _compile_limits(),
             run_processes=64, env={"GOMAXPROCS": "1"}),
}
"""Every language besides Python, by name."""
ALIASES = {alias: lang.name for lang in LANGUAGES.values() for alias in lang.aliases}
ALIASES.update({"python": "python", "py": "python", "python3": "python"})


def canonical_language(name: str | None) -> str | None:
    """The language a name or fence tag means ("c++" -> "cpp", "py" -> "python"), or None if unknown."""
    return ALIASES.get(name.strip().lower()) if isinstance(name, str) else None


def language(name: str) -> Language:
    """A language by name or alias; ValueError naming the known ones otherwise."""
    canon = canonical_language(name)
    if canon is None or canon == "python":
        raise ValueError(f"language {name!r}: the sandbox runs python and {', '.join(LANGUAGES)} "
                         f"(aliases: {', '.join(sorted(ALIASES))})")
    return LANGUAGES[canon]


def run_argv(build: Build, limits: Limits) -> list[str]:
    """The run command with the run's limits filled in (a JVM's heap)."""
    return [a.replace("{heap}", str(max(64, limits.memory_mb * 3 // 4))) for a in build.argv]
