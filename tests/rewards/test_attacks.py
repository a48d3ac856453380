"""One test per attack: the shared attack file, our own variants of each family (defend the family), and the
attack files of the verdict path in tests/rewards/attacks/ (one per class: forged frames, malformed frames,
neighbours, the test namespace, work done by trusted processes). All probes live in a tmp dir."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.attacks import Probes, run_cases

# CI has the shared folder beside the clone, as here.
SHARED_ATTACKS = Path(__file__).resolve().parents[2].parent / "shared" / "sandbox-attacks" / "attacks.json"
OWN_ATTACKS = sorted((Path(__file__).parent / "attacks").glob("*.json"))

ADD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return 0\n"

# (id, code, expected reward: "0", "1" or "any")
VARIANTS = [
    ("exit_kill_self", WRONG + "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "0"),  # self-SIGKILL
    ("exit_abort", WRONG + "import os\nos.abort()\n", "0"),  # SIGABRT before tests
    ("exit_in_eq", "class E:\n    def __eq__(self, o):\n        raise SystemExit(0)\n"
                   "def add(a, b):\n    return E()\n", "0"),  # exit from a forged __eq__
    ("str_subclass_eq", "class S(str):\n    def __eq__(self, o):\n        return True\n    __hash__ = str.__hash__\n"
                        "def add(a, b):\n    return S('3')\n", "0"),  # subclass of a plain type
    ("int_subclass_eq", "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
                        "def add(a, b):\n    return I(0)\n", "0"),  # int subclass
    ("forge_frames_on_every_fd", WRONG + "import os, struct, json\n"
     "b = json.dumps({'t': 'result', 'seq': 0, 'ok': 3}).encode()\n"
     "for fd in range(3, 64):\n    try:\n        os.write(fd, struct.pack('>I', len(b)) + b)\n"
     "    except OSError:\n        pass\n", "0"),  # writes forged result frames to every fd
    ("thread_prints_markers", "import threading, time\ndef add(a, b):\n    return 0\n"
     "threading.Thread(target=lambda: [print('PASSED') or time.sleep(0.01) for _ in range(50)], daemon=True)"
     ".start()\n", "0"),  # a thread prints success markers while tests run
    ("patch_json_dumps", "import json\n_d = json.dumps\njson.dumps = lambda o, **k: _d({'t': 'result', 'seq': 0, "
     "'ok': 3}, **k)\ndef add(a, b):\n    return 0\n", "0"),  # patches the runner's serialiser
    ("monkeypatch_builtins_isinstance", "import builtins\nbuiltins.isinstance = lambda *a: True\n"
     "builtins.type = lambda *a: int\ndef add(a, b):\n    return '3'\n", "0"),  # tries to fool type checks
    ("huge_result", "def add(a, b):\n    return 'x' * (80 << 20)\n", "0"),  # result frame over the cap
    ("deep_result", "def add(a, b):\n    r = []\n    for _ in range(100000):\n        r = [r]\n    return r\n",
     "0"),  # nesting too deep to serialise
    ("stderr_flood", "import sys\ndef add(a, b):\n    return a + b\nwhile True:\n    sys.stderr.write('E' * 65536)\n",
     "0"),  # output cap counts stderr too
    ("mmap_bomb", "import mmap\n_m = mmap.mmap(-1, 8 << 30)\n_m[:] = b'x' * len(_m)\n" + ADD, "0"),  # mmap
    ("thread_bomb", "import threading, time\nfor _ in range(10000):\n    threading.Thread(target=time.sleep, "
     "args=(100,)).start()\n" + ADD, "0"),  # threads count against the pids limit
    ("orphan_sleeper", ADD + "import os, time\nif os.fork() == 0:\n    time.sleep(300)\n", "1"),  # leftover child
    ("daemon_late_write", ADD + "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1)\n"
     "    open('/tmp/sbx_victim/late_write.txt', 'w').write('late')\n", "1"),  # writes after the verdict
    ("subprocess_shell", ADD + "import subprocess\ntry:\n    subprocess.run(['sh', '-c', "
     "'touch /tmp/sbx_victim/pwned.txt; echo $FAKE_SECRET_TOKEN'], timeout=1)\nexcept Exception:\n    pass\n",
     "1"),  # shells out
    ("udp_send", ADD + "import socket\ntry:\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
     "('127.0.0.1', 47123))\nexcept OSError:\n    pass\n", "1"),  # UDP instead of TCP
    ("unix_socket_to_host", ADD + "import socket\ntry:\n    s = socket.socket(socket.AF_UNIX)\n"
     "    s.connect('/run/systemd/private')\nexcept OSError:\n    pass\n", "1"),  # host unix sockets
    ("read_host_proc_environ", ADD + "import os\nfor p in os.listdir('/proc'):\n    try:\n"
     "        print(open(f'/proc/{p}/environ').read())\n    except OSError:\n        pass\n",
     "1"),  # every readable /proc/*/environ
    ("unshare_user_ns", ADD + "import ctypes\nctypes.CDLL(None).unshare(0x10000000)\n"
     "open('/tmp/sbx_victim/pwned.txt', 'w')\n", "0"),  # tries to gain caps in a new user ns; open() fails
    ("raise_rlimits", ADD + "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n",
     "0"),  # raising a hard limit fails (ValueError/OSError at load)
    ("sigint_group", ADD + "import os, signal\nos.killpg(os.getpgid(0), signal.SIGINT)\n", "any"),  # SIGINT group
    ("kill_pid_1", ADD + "import os, signal\nos.kill(1, signal.SIGKILL)\n", "any"),  # host init / ns init
]


def _own_cases() -> list[tuple[str, str]]:
    """(file stem, attack id) of every case in tests/rewards/attacks/."""
    return [(f.stem, c["id"]) for f in OWN_ATTACKS for c in json.loads(f.read_text())]


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    where = tmp_path_factory.mktemp("probes")
    p = Probes(where / "sbx_victim", 0, where / "fake_secret.txt")  # a free port: other runs may share the machine
    yield p
    p.close()


@pytest.fixture(scope="module")
def reports(evaluator, probes):
    shared = json.loads(SHARED_ATTACKS.read_text()) if SHARED_ATTACKS.exists() else []
    ours = [{"id": i, "code": c, "expected_outcome": {"0": "reward 0", "1": "reward 1", "any": "reward 0 or 1"}[r]}
            for i, c, r in VARIANTS]
    files = [c for f in OWN_ATTACKS for c in json.loads(f.read_text())]
    return {r.id: r for r in run_cases(shared + ours + files, evaluator=evaluator, probes=probes)}


def _shared_ids() -> list[str]:
    if not SHARED_ATTACKS.exists():
        return ["shared-attacks-missing"]
    return [c["id"] for c in json.loads(SHARED_ATTACKS.read_text())]


@pytest.mark.parametrize("attack_id", _shared_ids())
def test_shared_attack(reports, attack_id):
    if not SHARED_ATTACKS.exists():
        pytest.skip(f"shared attack file not found at {SHARED_ATTACKS} (it sits beside the clone in CI)")
    r = reports[attack_id]
    assert r.correct and not r.damage and not r.harness_failure, r


@pytest.mark.parametrize("attack_id", [v[0] for v in VARIANTS])
def test_attack_variant(reports, attack_id):
    r = reports[attack_id]
    assert r.correct and not r.damage and not r.harness_failure, r


@pytest.mark.parametrize("file,attack_id", _own_cases())
def test_verdict_path_attack(reports, file, attack_id):
    r = reports[attack_id]
    assert r.correct and not r.damage and not r.harness_failure, r


def test_every_class_has_several_attacks():
    per_file = {f.stem: len(json.loads(f.read_text())) for f in OWN_ATTACKS}
    assert set(per_file) == {"forged_frames", "malformed_frames", "neighbours", "test_namespace", "trusted_work"}
    assert min(per_file.values()) >= 2, per_file


def test_attack_cli_on_shared_file(tmp_path):
    if not SHARED_ATTACKS.exists():
        pytest.skip(f"shared attack file not found at {SHARED_ATTACKS} (it sits beside the clone in CI)")
    proc = subprocess.run([sys.executable, "-m", "rewards.attacks", str(SHARED_ATTACKS), "--timeout", "1.5",
                           "--probe-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary == {"cases": 28, "correct_verdicts": 28, "host_damage": 0, "harness_failures": 0}, proc.stdout
    assert len(lines) == 29 and proc.returncode == 0


def test_attack_cli_fails_on_a_wrong_verdict(tmp_path):
    bad = tmp_path / "bad.json"  # a correct solution labelled "reward 0": the runner must say so and exit 1
    bad.write_text(json.dumps([{"id": "mislabelled", "code": ADD, "expected_outcome": "reward 0"}]))
    proc = subprocess.run([sys.executable, "-m", "rewards.attacks", str(bad), "--timeout", "1",
                           "--probe-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and json.loads(proc.stdout.splitlines()[-1])["correct_verdicts"] == 0
