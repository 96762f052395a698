"""`python -m actlabel.models.llama_check`: prove the installed llama.cpp runs on this CPU.

scripts/setup runs it after installing. Two checks, each a one-line verdict:
1. the CPU backend library contains no AVX-512 or AMX instructions (the x86-64-v3 baseline the
   setup builds for; a `-march=native` build on a machine that has them would fault elsewhere),
   read with objdump when it is installed;
2. one real decode with the smallest embedded model (SmolLM2-135M), in a child process, so an
   illegal instruction is reported here in one line rather than killing a user's run later.
Exit status 0 when both pass, 1 otherwise.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

from actlabel.models.llama_worker import crash_message

#: x86 registers and mnemonics outside the baseline: zmm (AVX-512) and tile (AMX) instructions
_BEYOND_BASELINE = re.compile(rb"%zmm\d|%tmm\d|\btile(?:loadd|stored|zero|release|cfg)|\btdpb")

_DECODE = r"""
import sys
from actlabel.models.llama_local import LlamaBackend, smollm2_path
from actlabel.models.base import ChatRequest, Message
b = LlamaBackend(smollm2_path(), n_ctx=512)
r = b.chat_sync(ChatRequest((Message.text("user", "Say yes."),), max_tokens=4))
print(f"decoded {r.usage.output_tokens} tokens")
"""


def native_libraries() -> list[Path]:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations)))
    return sorted(p for p in folder.rglob("libggml*.so*") if p.is_file())


def check_instructions() -> tuple[bool, str]:
    libs = native_libraries()
    if not libs:
        return False, "llama-cpp-python is not installed (pip install 'actlabel[local]')"
    objdump = shutil.which("objdump")
    if objdump is None:
        return True, "objdump not found: instruction check skipped"
    bad = []
    for lib in libs:
        out = subprocess.run(
            [objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, check=False
        )
        hits = len(_BEYOND_BASELINE.findall(out.stdout))
        if hits:
            bad.append(f"{lib.name} ({hits})")
    if bad:
        return False, (
            f"the installed llama.cpp uses AVX-512/AMX instructions in {', '.join(bad)}: it was built for "
            "another CPU; rebuild it with `scripts/setup --rebuild-llama`"
        )
    return True, f"no AVX-512/AMX instructions in {len(libs)} native libraries"


def check_decode(timeout: float = 300) -> tuple[bool, str]:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _DECODE], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"one decode with local/smollm2 did not finish in {timeout:.0f} s"
    if proc.returncode == 0:
        return True, proc.stdout.strip() or "decoded"
    if proc.returncode < 0:
        return False, crash_message("local/smollm2", proc.returncode)
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return False, f"one decode with local/smollm2 failed: {last}"


def main() -> int:
    ok = True
    for name, check in (("instructions", check_instructions), ("decode", check_decode)):
        passed, message = check()
        print(f"setup: llama.cpp {name}: {'ok' if passed else 'FAILED'}: {message}", file=sys.stderr)
        ok = ok and passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
