"""Eight processes on one library at once, six writing and two reading: nothing lost, nothing
half-read, no temporaries left."""

import subprocess
import sys
import textwrap

from prompt_transfer.transfer import library

WRITER = """
import sys, numpy as np
from prompt_transfer.transfer.library import Library
lib = Library(sys.argv[1])
worker = int(sys.argv[2])
for i in range(25):
    prompt = np.full((2, 3), worker * 1000 + i, np.float32)
    lib.add(prompt, task=f"t{worker}_{i}", model="m", model_fingerprint="", steps=1)
    if i % 5 == 0:  # the same prompt again, with new metadata
        lib.add(prompt, task=f"t{worker}_{i}", model="m", model_fingerprint="", steps=2)
"""

READER = """
import sys, warnings, numpy as np
from prompt_transfer.transfer.library import Library
warnings.simplefilter("error")  # a half-written entry read as corrupted fails the reader
lib = Library(sys.argv[1])
seen = 0
for _ in range(60):
    entries, prompts = lib.load()
    for entry, prompt in zip(entries, prompts):
        worker, i = (int(x) for x in entry.task[1:].split("_"))
        assert (prompt == worker * 1000 + i).all(), entry.id
    seen = max(seen, len(entries))
print(seen)
"""


def test_six_writers_and_two_readers_lose_and_tear_nothing(tmp_path):
    run = lambda code, *args: subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs = [run(WRITER, w) for w in range(1, 7)] + [run(READER), run(READER)]
    results = [(p.wait(timeout=300), p.stderr.read()[-1500:]) for p in procs]
    assert [code for code, _ in results] == [0] * 8, results
    entries = library.Library(tmp_path).entries()
    assert len(entries) == 150 and len({e.id for e in entries}) == 150
    assert {e.steps for e in entries if int(e.task.split("_")[1]) % 5 == 0} == {2}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries
